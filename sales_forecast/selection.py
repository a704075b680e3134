"""What the backtest decides: every method scored at every origin, the method per target, refit epochs, intervals."""

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor

from sales_forecast.evaluation import evaluate_methods, mean_over_origins, metric_table
from sales_forecast.forecast import forecast_frame, selected_forecast, with_blends
from sales_forecast.intervals import fit_intervals, interval_bounds
from sales_forecast.panel import Panel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OriginResult:
    """One backtest origin: each method's forecast of its test window and the actual weeks, in original units."""

    start: str  # first forecast week
    keys: pd.DataFrame  # id columns of each test window's series
    y: np.ndarray  # (windows, horizon, targets)
    forecasts: dict[str, np.ndarray]
    scale: np.ndarray  # (windows, targets): the origin's scaler, which normalises interval errors
    mase_scale: np.ndarray  # (windows, targets)
    training: dict


def refit_epochs(origins: Sequence[OriginResult]) -> int:
    """Epochs for the final model: the best validation epochs of the origins, their median weighted by training
    windows (origins without training do not vote; 0 keeps the pretrained weights)."""
    votes = [
        (o.training["best_epoch"], o.training["train_windows"]) for o in origins if "valid_wape_best" in o.training
    ]
    if not votes:
        return 0
    epochs, weights = np.array(votes, dtype=float).T
    order = np.argsort(epochs)
    half = np.searchsorted(np.cumsum(weights[order]), weights.sum() / 2)
    return int(round(epochs[order][half]))


def select_methods(mean: dict, candidates: tuple) -> dict[str, dict]:
    """Per target, the candidate with the lowest mean backtest WAPE (ties: the earlier candidate), with its margin
    over the pretrained model and over the runner-up."""
    selection = {}
    for target, by_method in mean.items():
        ranked = sorted(candidates, key=lambda m: (by_method[m]["wape"], candidates.index(m)))
        best, runner_up = by_method[ranked[0]]["wape"], by_method[ranked[1]]["wape"]
        selection[target] = {
            "method": ranked[0],
            "wape": best,
            "zero_shot_wape": by_method["zero_shot"]["wape"],
            "vs_zero_shot": best / by_method["zero_shot"]["wape"],
            "runner_up": ranked[1],
            "runner_up_wape": runner_up,
        }
    return selection


def score_backtest(
    origins: Sequence[OriginResult], *, targets: tuple, methods: tuple, forced: str
) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """Every method and blend scored at every origin (original units), the mean over origins, and per target the
    method with the lowest mean WAPE (methods in order of preference on a tie; `forced` when not "auto").

    Returns the per-series metrics, the figures for metricas.json and the selection {target: method}.
    """
    rows, per_origin = [], []
    for origin in origins:
        forecasts = with_blends(origin.forecasts, methods)
        per_series, overall = evaluate_methods(
            origin.y, forecasts, scale=origin.mase_scale, keys=origin.keys, targets=targets
        )
        rows.append(per_series.assign(origin=origin.start))
        per_origin.append(overall)
    mean, spread = mean_over_origins(per_origin)
    chosen = select_methods(mean, methods)
    for target, figures in chosen.items():
        figures["method"] = figures["method"] if forced == "auto" else forced
        logger.info(
            "%s: forecasting with %s (%s), mean backtest WAPE %.4f over %d origins = %.3f x zero-shot %.4f; runner-up "
            "%s %.4f",
            target,
            figures["method"],
            "backtest winner" if forced == "auto" else "FORECAST_METHOD",
            mean[target][figures["method"]]["wape"],
            len(origins),
            mean[target][figures["method"]]["wape"] / figures["zero_shot_wape"],
            figures["zero_shot_wape"],
            figures["runner_up"],
            figures["runner_up_wape"],
        )
    logger.info(
        "Mean over %d backtest origins (original units, forecasts clipped at 0):\n%s", len(origins), metric_table(mean)
    )
    figures = {
        "backtest": {
            "origins": [
                {"origin": o.start, "n_series": len(o.keys), "metrics": m, "training": o.training}
                for o, m in zip(origins, per_origin)
            ],
            "spread": spread,
        },
        "metrics": mean,
        "selection": chosen,
    }
    return pd.concat(rows, ignore_index=True), figures, {t: f["method"] for t, f in chosen.items()}


def backtest_intervals(
    origins: Sequence[OriginResult], selection: dict[str, str], level: float
) -> tuple[PostHocProbabilisticProcessor | None, dict, tuple[np.ndarray, np.ndarray] | None]:
    """Intervals calibrated on the selected forecasts of every origin; their coverage measured on the last origin
    with intervals calibrated on the others only (held out).

    Returns the intervals for the future, the coverage figures and the last origin's held-out bounds (or None).
    """

    def calibrate(part: Sequence[OriginResult]) -> PostHocProbabilisticProcessor | None:
        y = np.concatenate([o.y / o.scale[:, None] for o in part])
        pred = np.concatenate([selected_forecast(o.forecasts, selection) / o.scale[:, None] for o in part])
        return fit_intervals(y, pred, level)

    figures, held_out, bounds = {"interval_level": level}, calibrate(origins[:-1]) if len(origins) > 1 else None, None
    if held_out is not None:
        last = origins[-1]
        bounds = interval_bounds(held_out, selected_forecast(last.forecasts, selection), last.scale)
        inside = ((last.y >= bounds[0]) & (last.y <= bounds[1])).mean(axis=(0, 1))
        figures["interval_coverage"] = dict(zip(selection, map(float, inside)))
        figures["interval_coverage_origin"] = last.start
    return calibrate(origins), figures, bounds


@dataclass(frozen=True)
class Choice:
    """What the backtest decided, per target, and what it measured."""

    selection: dict[str, str]  # target -> method or blend
    per_series: pd.DataFrame  # metricas_por_serie.csv
    figures: dict  # backtest, metrics (mean over origins), selection, interval figures: for metricas.json
    conformal: PostHocProbabilisticProcessor | None  # calibrated on every origin, for the future
    last_origin: pd.DataFrame  # the last origin's selected forecast and held-out interval, previsoes.csv-like


def choose_methods(
    origins: Sequence[OriginResult], *, panel: Panel, methods: tuple, forced: str, level: float, date_column: str
) -> Choice:
    """Score every method at every origin, pick one per target and calibrate the intervals on its errors."""
    per_series, figures, selection = score_backtest(origins, targets=panel.targets, methods=methods, forced=forced)
    conformal, intervals, bounds = backtest_intervals(origins, selection, level)
    last = origins[-1]
    test_start = panel.dates.get_loc(pd.Timestamp(last.start))
    frame = forecast_frame(
        last.keys,
        selected_forecast(last.forecasts, selection),
        bounds,
        dates=panel.dates[test_start : test_start + last.y.shape[1]],
        targets=panel.targets,
        date_column=date_column,
    )
    return Choice(selection, per_series, figures | intervals, conformal, frame)
