"""Totals per id column and overall: bottom-up sums of the series' forecasts, with intervals of their own."""

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor

from sales_forecast.forecast import selected_forecast
from sales_forecast.intervals import fit_intervals, interval_bounds
from sales_forecast.selection import MIN_CALIBRATION_WINDOWS, OriginResult, calibration_indices, next_week

logger = logging.getLogger(__name__)

TOTAL = "total"  # the level (nivel) and key (chave) of the sum of every series


def level_labels(keys: pd.DataFrame) -> dict[str, np.ndarray]:
    """The group of each series at each level: its value of each id column, and TOTAL for the overall sum."""
    return {column: keys[column].astype(str).to_numpy() for column in keys.columns} | {
        TOTAL: np.full(len(keys), TOTAL)
    }


def sum_by(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The groups (sorted) and the sum of values (series, ...) over each group's series."""
    groups, codes = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(groups), *values.shape[1:]))
    np.add.at(sums, codes, values)
    return groups, sums


SCALE_FLOOR = 0.25  # a week's scale is at least this share of its group's mean forecast (no dunnhumby week is below)


def level_scale(point: np.ndarray) -> np.ndarray:
    """(groups, horizon, targets): each group's forecast of each week, the unit its interval errors are measured in
    (a total has no scaler of its own; its forecast stands in): a week the series' forecasts lift, by a promotion or
    the season, gets a wider interval. On the dunnhumby cut with drivers, against the mean over the horizon: real-week
    coverage of product / UF / overall totals 0.808 / 0.837 / 0.808 -> 0.824 / 0.837 / 0.808 (vendas) and
    0.818 / 0.904 / 0.769 -> 0.830 / 0.856 / 0.808 (faturamento), the products' scaled CRPS of the bounds 7% lower.
    At least SCALE_FLOOR x the group's mean over the horizon: a week forecast near 0 (a closure, a sparse product)
    would otherwise divide that week's error by almost 0 and widen every group's interval."""
    clipped = np.clip(point, 0, None)
    return np.maximum(np.maximum(clipped, SCALE_FLOOR * clipped.mean(axis=1, keepdims=True)), 1e-9)


@dataclass(frozen=True)
class LevelIntervals:
    """One level's conformal intervals: per forecast week, or pooled over the weeks when the backtest had fewer
    than MIN_CALIBRATION_WINDOWS windows of that level (a handful of UFs, one overall total)."""

    conformal: PostHocProbabilisticProcessor | None
    pooled: bool

    def bounds(self, point: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Lower and upper bounds around the groups' point forecasts (groups, horizon, targets)."""
        if self.conformal is None:
            return None
        scale = level_scale(point)
        if not self.pooled:
            return interval_bounds(self.conformal, point, scale)
        flat = (1, point.shape[2])
        lower, upper = interval_bounds(self.conformal, point.reshape(-1, *flat), scale.reshape(-1, *flat))
        return lower.reshape(point.shape), upper.reshape(point.shape)


def fit_level_intervals(errors: Sequence[tuple[np.ndarray, np.ndarray]], level: float) -> LevelIntervals:
    """Conformal intervals on (actual, forecast) sums of the level's groups at each origin, in the groups' forecast
    level (level_scale)."""
    y = np.concatenate([actual / level_scale(point) for actual, point in errors])
    pred = np.concatenate([point / level_scale(point) for _, point in errors])
    pooled = len(y) < MIN_CALIBRATION_WINDOWS
    if pooled:
        y, pred = y.reshape(-1, 1, y.shape[2]), pred.reshape(-1, 1, pred.shape[2])
    return LevelIntervals(fit_intervals(y, pred, level), pooled)


def _calibration_sums(
    origins: Sequence[OriginResult], sums: Sequence[tuple[np.ndarray, np.ndarray]], first_week: str | pd.Timestamp
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sums of the origins that calibrate this level's intervals for forecasts from first_week on:
    selection.calibration_indices' rule, counting windows (groups), or group-weeks where all origins hold fewer than
    MIN_CALIBRATION_WINDOWS windows (a few UFs, one total: pooled over weeks)."""
    pooled = sum(len(actual) for actual, _ in sums) < MIN_CALIBRATION_WINDOWS
    windows = [actual.shape[0] * (actual.shape[1] if pooled else 1) for actual, _ in sums]
    return [sums[i] for i in calibration_indices(origins, windows, first_week)]


def _level_sums(origin: OriginResult, selection: dict[str, str], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actual and the selected forecast of one origin's test window summed per group of one level."""
    _, actual = sum_by(origin.y, labels)
    _, point = sum_by(np.clip(selected_forecast(origin.forecasts, selection), 0, None), labels)
    return actual, point


def backtest_totals(
    origins: Sequence[OriginResult], selection: dict[str, str], *, level: float, targets: tuple
) -> tuple[dict[str, LevelIntervals], dict]:
    """Per level: intervals calibrated on the origins of _calibration_sums, and the backtest figures for metricas.json:
    WAPE and bias of the bottom-up totals (mean over origins) and the coverage on the last origin of intervals
    calibrated on the origins before it (held out)."""
    intervals, figures = {}, {}
    for name in level_labels(origins[-1].keys):
        sums = [_level_sums(o, selection, level_labels(o.keys)[name]) for o in origins]
        held_out = (
            fit_level_intervals(_calibration_sums(origins[:-1], sums[:-1], origins[-1].start), level)
            if len(sums) > 1
            else LevelIntervals(None, True)
        )
        bounds = held_out.bounds(sums[-1][1])
        by_target = {}
        for c, target in enumerate(targets):
            actual = [a[..., c] for a, _ in sums]
            error = [p[..., c] - a[..., c] for a, p in sums]
            by_target[target] = {
                "wape": float(np.mean([np.abs(e).sum() / np.abs(a).sum() for e, a in zip(error, actual)])),
                "bias": float(np.mean([e.sum() / np.abs(a).sum() for e, a in zip(error, actual)])),
                "groups": int(len(sums[-1][0])),
            }
            if bounds is not None:
                last = actual[-1]
                inside = (last >= bounds[0][..., c]) & (last <= bounds[1][..., c])
                by_target[target]["interval_coverage"] = float(inside.mean())
        figures[name] = by_target
        intervals[name] = fit_level_intervals(_calibration_sums(origins, sums, next_week(origins)), level)
    wapes = {name: "/".join(f"{values['wape']:.4f}" for values in f.values()) for name, f in figures.items()}
    logger.info("Totals are bottom-up sums of the series' forecasts (not reconciled); backtest WAPE %s", wapes)
    return intervals, figures


def level_sums(forecast: pd.DataFrame, *, id_columns: tuple, targets: tuple, date_column: str) -> pd.DataFrame:
    """previsoes.csv rows summed per level (each id column, then the total), group and week: targets indexed by
    (nivel, chave, date). Sums of parts of the series add up (add_sums): predict mode sums each part it forecasts."""
    sums = {}
    for name in (*id_columns, TOTAL):
        labels = forecast[name].astype(str) if name != TOTAL else pd.Series(TOTAL, index=forecast.index)
        sums[name] = forecast.groupby([labels.rename("chave"), forecast[date_column]])[list(targets)].sum()
    return pd.concat(sums, names=["nivel"])


def add_sums(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The level_sums of all the series from those of parts of them."""
    return pd.concat(parts).groupby(level=[0, 1, 2], sort=False).sum()


def totals_frame(
    sums: pd.DataFrame,
    intervals: dict[str, LevelIntervals] | None,
    *,
    id_columns: tuple,
    targets: tuple,
    date_column: str,
) -> pd.DataFrame:
    """previsoes_totais.csv rows from level_sums: per level (each id column, then the total), group and week, the
    summed forecast of each target and the level's own bounds."""
    frames = []
    dates = np.sort(sums.index.unique(2))
    for name in (*id_columns, TOTAL):
        summed = sums.loc[name]
        groups = np.sort(summed.index.unique(0))
        summed = summed.reindex(pd.MultiIndex.from_product([groups, dates]), fill_value=0)
        point = summed.to_numpy().reshape(len(groups), len(dates), len(targets))
        frame = pd.DataFrame(
            {"nivel": name, "chave": np.repeat(groups, len(dates)), date_column: np.tile(dates, len(groups))}
        )
        bounds = intervals[name].bounds(point) if intervals and name in intervals else None
        for c, target in enumerate(targets):
            frame[target] = point[..., c].ravel()
            if bounds is not None:
                frame[f"{target}_lower"] = np.minimum(bounds[0][..., c], point[..., c]).ravel()
                frame[f"{target}_upper"] = np.maximum(bounds[1][..., c], point[..., c]).ravel()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
