"""Forecasts by method (baselines, TTM models, their blends) in original units, and previsoes.csv's rows."""

import logging
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor

from sales_forecast.gbm import MIN_WEEKS, GbmForecaster, gbm_forecast
from sales_forecast.intervals import interval_bounds, interval_scale, kind_factor
from sales_forecast.model import window_shape
from sales_forecast.scaling import ScaledPanel
from sales_forecast.windows import Windows, future_windows, window_dataset

logger = logging.getLogger(__name__)


FITTED = "@fitted"  # a blend whose weights the backtest fits (see selection.fitted_blends)
FALLBACK = "zero_shot"  # the forecast of a series none of a method's parts can forecast (a short series, gbm alone)


def _weighted_parts(method: str) -> list[tuple[str, str]]:
    """(weight as written, "" where none; forecast) of each part of a method's name, such as 0.6*gbm+0.4*fine_tuned."""
    return [part.rpartition("*")[::2] for part in method.removesuffix(FITTED).split("+")]


def method_parts(method: str) -> tuple[str, ...]:
    """The forecasts a method is made of: itself, or the parts of a blend such as fine_tuned+zero_shot or
    0.6*gbm+0.4*fine_tuned."""
    return tuple(part for _, part in _weighted_parts(method))


def needed_forecasts(methods: Iterable[str]) -> set[str]:
    """The forecasts that these methods are made of, and FALLBACK's where the gbm is one of them (it stands in for
    the series the gbm cannot forecast)."""
    needed = {part for method in methods for part in method_parts(method)}
    return needed | {FALLBACK} if "gbm" in needed else needed


def method_weights(method: str) -> np.ndarray:
    """The weight of each part (1 where the name gives none), summing to 1."""
    weights = np.array([float(weight or 1) for weight, _ in _weighted_parts(method)])
    return weights / weights.sum() if weights.sum() else np.full(len(weights), 1 / len(weights))


def weighted_name(parts: tuple[str, ...], weights: np.ndarray) -> str:
    """The method of these parts with these weights, e.g. 0.65*gbm+0.35*fine_tuned."""
    return "+".join(f"{w:.2f}*{part}" for part, w in zip(parts, weights))


def blend(forecasts: dict[str, np.ndarray], method: str) -> np.ndarray:
    """The forecast of `method`: the weighted mean of its parts where they have a forecast (NaN: a series the gbm
    could not forecast), FALLBACK's where none of them has."""
    if method.endswith(FITTED):
        raise ValueError(f"{method}: a fitted blend needs its weights first (selection.fitted_blends)")
    parts = np.stack([forecasts[part] for part in method_parts(method)])
    weights = method_weights(method).reshape(-1, *[1] * (parts.ndim - 1)) * ~np.isnan(parts)
    total = weights.sum(axis=0)
    mixed = np.nansum(parts * weights, axis=0) / np.where(total > 0, total, 1)
    return mixed if (total > 0).all() else np.where(total > 0, mixed, forecasts[FALLBACK])


def selected_forecast(forecasts: dict[str, np.ndarray], selection: dict[str, str]) -> np.ndarray:
    """The forecast of each target by its selected method (a single method or a blend)."""
    return np.stack([blend(forecasts, method)[..., c] for c, method in enumerate(selection.values())], axis=-1)


def baseline_forecasts(values: np.ndarray, start: np.ndarray, windows: Windows, horizon: int) -> dict[str, np.ndarray]:
    """Seasonal naive (same week last year; last value when the series is younger) and naive (last value)."""
    series, cuts = windows
    naive = np.repeat(values[series, cuts - 1][:, None], horizon, axis=1)
    t = cuts[:, None] + np.arange(horizon) - 52
    seasonal = np.where((t >= start[series, None])[..., None], values[series[:, None], np.maximum(t, 0)], naive)
    return {"seasonal_naive": seasonal, "naive": naive}


@torch.no_grad()
def forecast_scaled(
    model: torch.nn.Module, data: ScaledPanel, windows: Windows, *, horizon: int, batch_size: int | None = None
) -> np.ndarray:
    """Point forecasts, shape (windows, horizon, targets), in scaled units. With drivers, the windows' future weeks
    carry them (targets zeroed), as the forecast channel mixing reads them.

    batch_size None: 512 windows on CPU (median of 3 on 2 cores: 1,940 series/s against 1,580 at 256 and 1,710 at
    1,024), 4,096 on GPU.
    """
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or (512 if device.type == "cpu" else 4096)
    ahead = horizon if data.drivers is not None and data.drivers.shape[2] else 0
    dataset = window_dataset(
        data,
        windows,
        **window_shape(model),
        horizon=ahead,
        target_end=windows[1] if ahead else None,
        device=device,
    )
    out = [np.zeros((0, horizon, data.values.shape[2]), np.float32)]
    for i in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(range(i, min(i + batch_size, len(dataset))))
        batch.pop("future_observed_mask", None)
        out.append(model(**batch, return_loss=False).prediction_outputs[:, :horizon].float().cpu().numpy())
    return np.concatenate(out)


def method_forecasts(
    models: dict[str, torch.nn.Module | GbmForecaster | None], data: ScaledPanel, windows: Windows, *, horizon: int
) -> dict[str, np.ndarray]:
    """The baselines and each model's forecast of the windows, in original units (backtest origins and the future:
    every window starts after the panel's last week). The gbm's ("gbm", None when it had nothing to learn from) is
    NaN for series too short for it and for series it was not fitted on (predict mode: their level may lie outside
    what its trees learned, where the TTM forecast, scaled on the series' own history, does not)."""
    forecasts = baseline_forecasts(data.panel.values, data.panel.start, windows, horizon)
    for name, model in models.items():
        if name == "gbm":
            gbm = gbm_forecast(model, data.panel, horizon=horizon)
            gbm[~data.scaling.known] = np.nan
            forecasts[name] = gbm[windows[0]]
            left_out = np.isnan(forecasts[name]).any(axis=(1, 2)).sum()
            if left_out:
                logger.info(
                    "gbm: %d of %d series are new or have fewer than %d weeks; the TTM forecast stands in for theirs",
                    left_out,
                    len(windows[0]),
                    MIN_WEEKS,
                )
            continue
        scaled = forecast_scaled(model, data, windows, horizon=horizon)
        forecasts[name] = data.scaling.invert(scaled, windows)
    return forecasts


def forecast_frame(
    keys: pd.DataFrame,
    point: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    *,
    dates: pd.DatetimeIndex,
    targets: tuple,
    date_column: str,
    new_series: np.ndarray | None = None,
) -> pd.DataFrame:
    """previsoes.csv rows: every series (keys) x dates, point forecast and bounds per target."""
    horizon = point.shape[1]
    frame = pd.DataFrame({date_column: np.tile(dates, len(keys))})
    for col in keys.columns:
        frame[col] = np.repeat(keys[col].to_numpy(), horizon)
    for c, target in enumerate(targets):
        frame[target] = point[..., c].ravel()
        if bounds is not None:
            frame[f"{target}_lower"] = bounds[0][..., c].ravel()
            frame[f"{target}_upper"] = bounds[1][..., c].ravel()
    if new_series is not None:
        frame["new_series"] = np.repeat(new_series, horizon)
    return frame


def forecast_future(
    models: dict[str, torch.nn.Module | GbmForecaster | None],
    data: ScaledPanel,
    conformal: PostHocProbabilisticProcessor | None,
    selection: dict[str, str],
    *,
    horizon: int,
    date_column: str,
    scale_kind: str,
) -> pd.DataFrame:
    """previsoes.csv rows: every series forecast from its last week by each target's selected method (point and
    bounds, original units, the bounds in the interval scale of that kind: intervals.SCALES); series the scaler did
    not know are flagged new_series."""
    panel = data.panel
    needed = needed_forecasts(selection.values())
    windows = future_windows(panel)
    forecasts = method_forecasts({n: m for n, m in models.items() if n in needed}, data, windows, horizon=horizon)
    point = selected_forecast(forecasts, selection)
    logger.info(
        "Forecast of %d series x %d weeks by %s",
        len(panel.keys),
        horizon,
        ", ".join(f"{target}: {method}" for target, method in selection.items()),
    )
    scale = interval_scale(
        panel.values,
        panel.start,
        len(panel.dates),
        data.scaling.scale,
        factor=kind_factor(data.scaling, scale_kind),
        windows=windows,
        horizon=horizon,
    )
    bounds = None if conformal is None else interval_bounds(conformal, point, scale)
    dates = pd.date_range(panel.dates[-1], periods=horizon + 1, freq=panel.dates.freq)[1:]
    return forecast_frame(
        panel.keys,
        point,
        bounds,
        dates=dates,
        targets=panel.targets,
        date_column=date_column,
        new_series=~data.scaling.known,
    )
