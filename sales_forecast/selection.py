"""What the backtest decides: every method scored at every origin, the method per target, refit epochs, intervals."""

import itertools
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor

from sales_forecast.evaluation import evaluate_methods, mean_over_origins, metric_table
from sales_forecast.forecast import (
    FALLBACK,
    FITTED,
    blend,
    forecast_frame,
    method_parts,
    method_weights,
    selected_forecast,
    weighted_name,
)
from sales_forecast.intervals import SCALES, fit_intervals, interval_bounds, interval_scores
from sales_forecast.panel import Panel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OriginResult:
    """One backtest origin: each method's forecast of its test window and the actual weeks, in original units."""

    start: str  # first forecast week
    keys: pd.DataFrame  # id columns of each test window's series
    y: np.ndarray  # (windows, horizon, targets)
    forecasts: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]  # (windows, horizon, targets) interval error scales by kind (intervals.SCALES)
    mase_scale: np.ndarray  # (windows, targets)
    training: dict


def trained(origin: OriginResult) -> bool:
    """Whether the origin had training and validation windows (without them its fine_tuned is the pretrained model)."""
    return "valid_wape_best" in origin.training


def origin_weights(origins: Sequence[OriginResult]) -> np.ndarray:
    """How much each origin counts in the mean over origins (the selection) and in the refit's epochs: the windows
    its fine-tuning trained on; an origin without training counts nothing; where none trained, each the same.

    The final models train on every week, more than any origin's: the origins whose models learned from the most
    weeks are the most like them. On the dunnhumby cut without drivers (4 seeds) the origin with half the training
    windows of the last one ranked gbm+fine_tuned+zero_shot ~0.003 ahead of gbm+fine_tuned (its gbm, with 26 weeks
    per series past its 52 lags, erred 1.03 x the zero-shot; at the last origin 0.98 x); the last origin and the
    real weeks ranked them the other way (0.3419-0.3429 against 0.3465-0.3472), and the plain mean picked the
    three-way blend in 2 of the 4 runs. With drivers (4 runs) both means pick the same."""
    windows = np.array([o.training["train_windows"] if trained(o) else 0 for o in origins], dtype=float)
    return windows if windows.sum() else np.ones(len(origins))


def refit_epochs(origins: Sequence[OriginResult]) -> int:
    """Epochs for the final model: the best validation epochs of the origins, their median weighted by
    origin_weights (origins without training do not vote; 0 keeps the pretrained weights)."""
    if not any(trained(o) for o in origins):
        return 0
    epochs, weights = np.array([o.training["best_epoch"] for o in origins], dtype=float), origin_weights(origins)
    order = np.argsort(epochs)
    half = np.searchsorted(np.cumsum(weights[order]), weights.sum() / 2)
    return int(round(epochs[order][half]))


def select_methods(mean: dict, candidates: tuple) -> dict[str, dict]:
    """Per target, the candidate with the lowest mean backtest WAPE (mean over origins by origin_weights; ties: the
    earlier candidate), with its margin over the pretrained model and over the runner-up."""
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


WEIGHT_STEP = 20  # blend weights are chosen among multiples of 1/20


def _weight_grid(n_parts: int) -> list[np.ndarray]:
    """Every weighting of n parts by multiples of 1/WEIGHT_STEP summing to 1, in a fixed order (ties: the first)."""
    grid = [np.array(w) / WEIGHT_STEP for w in itertools.product(range(WEIGHT_STEP + 1), repeat=n_parts)]
    return [w for w in grid if np.isclose(w.sum(), 1)]


def _grid_errors(origin: OriginResult, parts: tuple[str, ...], target: int, grid: list[np.ndarray]) -> list[float]:
    """The absolute error of the target at one origin (forecast clipped at 0, as scored) for each weighting of the
    parts in the grid. Twin of forecast.blend weighting by weighting: the same operations in the same order, so the
    same errors (a test compares), with the parts read and their gaps found once instead of once per weighting
    (10,000 series x 3 origins: the search took 64 s with blend, mostly its stacking and nansum; now 7 s)."""
    stacked = [origin.forecasts[part][..., target] for part in parts]
    observed = [~np.isnan(forecast) for forecast in stacked]
    filled = [np.where(seen, forecast, 0.0) for forecast, seen in zip(stacked, observed)]
    actual = origin.y[..., target]
    errors = []
    for weights in grid:
        w = method_weights(weighted_name(parts, weights))
        total = sum(wk * seen for wk, seen in zip(w, observed))
        mixed = sum(forecast * wk for wk, forecast in zip(w, filled)) / np.where(total > 0, total, 1)
        if not (total > 0).all():
            mixed = np.where(total > 0, mixed, origin.forecasts[FALLBACK][..., target])
        errors.append(np.abs(actual - np.clip(mixed, 0, None)).sum())
    return errors


def fitted_blends(origins: Sequence[OriginResult], methods: tuple, n_targets: int) -> list[dict[str, list[str]]]:
    """For each origin, each fitted blend's weighted method per target, its weights chosen on the earlier trained
    origins only (out of sample; equal weights where none came before): the weights of the parts (multiples of
    1/WEIGHT_STEP summing to 1) with the lowest absolute error of the target over those origins' windows pooled. One
    more entry after the last: the weights fitted on every trained origin, for the future. An origin without training
    says nothing about the weights: its fine_tuned is the pretrained model and its gbm is missing where series are
    younger than its lags (the first origin of the dunnhumby cut set gbm's faturamento weight to 0 for the next
    origin: WAPE 0.2164 there, 0.2079 with equal weights)."""
    fitted = [m for m in methods if m.endswith(FITTED)]
    weights: list[dict[str, list[str]]] = [{m: [] for m in fitted} for _ in range(len(origins) + 1)]
    used = [i for i, origin in enumerate(origins) if trained(origin)]
    for method in fitted:
        parts = method_parts(method)
        grid = _weight_grid(len(parts))
        for target in range(n_targets):
            errors = {i: _grid_errors(origins[i], parts, target, grid) for i in used}
            for k, chosen in enumerate(weights):
                earlier = [i for i in used if i < k]
                best = (
                    grid[min(range(len(grid)), key=lambda g: sum(errors[i][g] for i in earlier))]
                    if earlier
                    else np.full(len(parts), 1 / len(parts))
                )
                chosen[method].append(weighted_name(parts, best))
    return weights


def method_forecast(forecasts: dict[str, np.ndarray], method: str, fitted: dict[str, list[str]]) -> np.ndarray:
    """The forecast of a candidate: a method, or a fitted blend with its weights per target."""
    if method not in fitted:
        return blend(forecasts, method)
    return np.stack([blend(forecasts, name)[..., c] for c, name in enumerate(fitted[method])], axis=-1)


def score_backtest(
    origins: Sequence[OriginResult],
    *,
    targets: tuple,
    methods: tuple,
    forced: str,
    weights: list[dict[str, list[str]]],
) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """Every method and blend scored at every origin (original units), the mean over origins (origin_weights), and
    per target the method with the lowest mean WAPE (methods in order of preference on a tie; `forced` when not
    "auto"). A fitted blend is scored with weights chosen on earlier origins and selected with the weights of every
    origin (weights: fitted_blends of these origins and methods).

    Returns the per-series metrics, the figures for metricas.json and the selection {target: method}.
    """
    methods = methods if forced in ("auto", *methods) else (*methods, forced)
    rows, per_origin = [], []
    for origin, fitted in zip(origins, weights):
        forecasts = {m: method_forecast(origin.forecasts, m, fitted) for m in methods}
        per_series, overall = evaluate_methods(
            origin.y, forecasts, scale=origin.mase_scale, keys=origin.keys, targets=targets
        )
        rows.append(per_series.assign(origin=origin.start))
        per_origin.append(overall)
    counts = origin_weights(origins)
    shares = counts / counts.sum()
    mean, spread = mean_over_origins(per_origin, shares)
    chosen = select_methods(mean, methods)
    for c, (target, figures) in enumerate(chosen.items()):
        figures["method"] = figures["method"] if forced == "auto" else forced
        logger.info(
            "%s: forecasting with %s (%s), mean backtest WAPE %.4f over %d origins (weighted by training windows) = "
            "%.3f x zero-shot %.4f; runner-up %s %.4f",
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
        if figures["method"] in weights[-1]:
            figures["candidate"], figures["method"] = figures["method"], weights[-1][figures["method"]][c]
            logger.info("%s: weights fitted on every origin: %s", target, figures["method"])
    logger.info(
        "Mean over %d backtest origins, weighted %s by their training windows (original units, forecasts clipped "
        "at 0):\n%s",
        len(origins),
        "/".join(f"{w:.2f}" for w in shares),
        metric_table(mean),
    )
    figures = {
        "backtest": {
            "origins": [
                {"origin": o.start, "n_series": len(o.keys), "metrics": m, "training": o.training}
                for o, m in zip(origins, per_origin)
            ],
            "origin_weights": shares.tolist(),
            "spread": spread,
            "blend_weights": {m: {t: [w[m][c] for w in weights] for c, t in enumerate(targets)} for m in weights[-1]},
        },
        "metrics": mean,
        "selection": chosen,
    }
    return pd.concat(rows, ignore_index=True), figures, {t: f["method"] for t, f in chosen.items()}


MIN_CALIBRATION_WINDOWS = 50  # intervals are calibrated on origins that hold at least this many windows
SEASON_WEEKS = 52  # a year of weeks: the same season's origins first, else the latest spanning a year


def next_week(origins: Sequence[OriginResult]) -> pd.Timestamp:
    """The first week after the last origin's test window: the future's first forecast week."""
    return pd.Timestamp(origins[-1].start) + pd.Timedelta(weeks=origins[-1].y.shape[1])


def calibration_indices(
    origins: Sequence[OriginResult], windows: Sequence[int], first_week: str | pd.Timestamp
) -> list[int]:
    """Which origins calibrate the intervals of forecasts from `first_week` on (windows: each origin's count).

    The same season first: the trained origins whose test windows start a whole number of years (SEASON_WEEKS
    weeks) before first_week, when they hold MIN_CALIBRATION_WINDOWS windows. Errors follow the season: on the
    dunnhumby cut (real weeks July to December), calibrated on the July-December origin a year before, the 80%
    interval covered 0.818 / 0.807 of the real weeks with drivers and 0.795 / 0.784 without; on the latest year of
    origins (both halves of the year) 0.854 / 0.843 and 0.825 / 0.824; on the latest origin alone (January to July)
    0.872 / 0.867. An origin without training (a year of history or less) erred 1.3 x the others there: it stays out.
    Otherwise the latest year: the fewest latest origins whose test windows span SEASON_WEEKS weeks and hold
    MIN_CALIBRATION_WINDOWS windows (all of them when none do), every season's errors in one pool; the latest
    errors are the most like the future's (models trained on the most weeks, windows with the most history).
    """
    first = pd.Timestamp(first_week)
    same = [
        i
        for i, o in enumerate(origins)
        if trained(o) and round((first - pd.Timestamp(o.start)).days / 7) % SEASON_WEEKS == 0
    ]
    if same and sum(windows[i] for i in same) >= MIN_CALIBRATION_WINDOWS:
        return same
    last, horizon = pd.Timestamp(origins[-1].start), origins[-1].y.shape[1]
    for count in range(1, len(origins) + 1):
        span = (last - pd.Timestamp(origins[-count].start)).days / 7 + horizon
        if span >= SEASON_WEEKS and sum(windows[-count:]) >= MIN_CALIBRATION_WINDOWS:
            return list(range(len(origins) - count, len(origins)))
    return list(range(len(origins)))


def series_calibration(origins: Sequence[OriginResult], first_week: str | pd.Timestamp) -> list[int]:
    """calibration_indices for the series' intervals: each origin counts its test windows."""
    return calibration_indices(origins, [len(o.y) for o in origins], first_week)


def _calibration(
    origins: Sequence[OriginResult], forecasts: Sequence[np.ndarray], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Actuals and forecasts of the origins' windows, each week in its interval scale of that kind."""
    return (
        np.concatenate([o.y / o.scales[kind] for o in origins]),
        np.concatenate([f / o.scales[kind] for o, f in zip(origins, forecasts)]),
    )


def _calibration_set(
    origins: Sequence[OriginResult], first_week: str | pd.Timestamp, selection: dict[str, str]
) -> tuple[list[OriginResult], list[np.ndarray]]:
    """The origins series_calibration picks for forecasts from first_week on, and the selected forecast of each."""
    part = [origins[i] for i in series_calibration(origins, first_week)]
    return part, [selected_forecast(o.forecasts, selection) for o in part]


def _held_out_crps(
    origins: Sequence[OriginResult],
    held: tuple[list[OriginResult], list[np.ndarray]],
    point: np.ndarray,
    *,
    targets: tuple,
    level: float,
) -> dict[str, float]:
    """{scale kind: mean scaled CRPS over the targets} of the intervals around the last origin's selected forecast
    (point), calibrated on `held` (_calibration_set of the origins before it), for each kind every origin has (empty
    with one kind or too few windows: nothing to choose)."""
    kinds = [k for k in SCALES if all(k in o.scales for o in origins)]
    if len(kinds) < 2:
        return {}
    last, crps = origins[-1], {}
    for kind in kinds:
        scores = interval_scores(
            _calibration(*held, kind), point, last.scales[kind], last.y, level=level, targets=targets
        )
        if scores is not None:
            crps[kind] = float(np.mean([s["scaled_crps"] for s in scores.values()]))
    return crps


def backtest_intervals(
    origins: Sequence[OriginResult], selection: dict[str, str], level: float
) -> tuple[PostHocProbabilisticProcessor | None, dict, tuple[np.ndarray, np.ndarray] | None, str]:
    """Intervals calibrated on the selected forecasts of the origins calibration_indices picks for the future; their
    coverage measured on the last origin with intervals calibrated on the origins before it only (held out). Their
    errors are measured in the scale kind (intervals.SCALES) whose held-out intervals score the lowest scaled CRPS
    (_held_out_crps; the first kind where none could be scored).

    Returns the intervals for the future, the figures, the last origin's held-out bounds (or None) and the kind.
    """
    last, point = origins[-1], selected_forecast(origins[-1].forecasts, selection)
    held = _calibration_set(origins[:-1], last.start, selection) if len(origins) > 1 else None
    crps = _held_out_crps(origins, held, point, targets=tuple(selection), level=level) if held is not None else {}
    kind = min(crps, key=crps.get) if crps else SCALES[0]
    if len(crps) > 1:
        logger.info(
            "Interval scale: %s (held-out scaled CRPS %s)", kind, ", ".join(f"{k} {v:.4f}" for k, v in crps.items())
        )
    held_out = fit_intervals(*_calibration(*held, kind), level) if held is not None else None
    part, forecasts = _calibration_set(origins, next_week(origins), selection)
    future, starts = fit_intervals(*_calibration(part, forecasts, kind), level), [o.start for o in part]
    logger.info("Intervals calibrated on the errors of the backtest origins %s", ", ".join(starts))
    figures, bounds = {"interval_level": level, "interval_calibration_origins": starts, "interval_scale": kind}, None
    if len(crps) > 1:
        figures["interval_scale_crps"] = crps
    if held_out is not None:
        bounds = interval_bounds(held_out, point, last.scales[kind])
        inside = ((last.y >= bounds[0]) & (last.y <= bounds[1])).mean(axis=(0, 1))
        figures["interval_coverage"] = dict(zip(selection, map(float, inside)))
        figures["interval_coverage_origin"] = last.start
    return future, figures, bounds, kind


def method_intervals(
    origins: Sequence[OriginResult],
    *,
    methods: tuple,
    targets: tuple,
    level: float,
    weights: list[dict[str, list[str]]],
    kind: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """Every method's intervals on the last origin, calibrated on the origins before it as the selected method's are
    (scale of that kind): {target: {method: coverage, width, scaled_crps}} (empty with one origin or too few windows).
    weights: fitted_blends of these origins and methods."""
    if len(origins) < 2:
        return {}
    chosen = series_calibration(origins[:-1], origins[-1].start)
    calibration = [origins[i] for i in chosen]
    scores: dict = {}
    for method in methods:
        forecasts = [method_forecast(origins[i].forecasts, method, weights[i]) for i in chosen]
        last = origins[-1]
        point = method_forecast(last.forecasts, method, weights[-2])
        figures = interval_scores(
            _calibration(calibration, forecasts, kind), point, last.scales[kind], last.y, level=level, targets=targets
        )
        for target, values in (figures or {}).items():
            scores.setdefault(target, {})[method] = values
    return scores


@dataclass(frozen=True)
class Choice:
    """What the backtest decided, per target, and what it measured."""

    selection: dict[str, str]  # target -> method or blend
    per_series: pd.DataFrame  # metricas_por_serie.csv
    figures: dict  # backtest, metrics (mean over origins), selection, interval figures: for metricas.json
    conformal: PostHocProbabilisticProcessor | None  # calibrated on every origin, for the future
    interval_scale: str  # the scale kind its errors are measured in (intervals.SCALES)
    last_origin: pd.DataFrame  # the last origin's selected forecast and held-out interval, previsoes.csv-like


def choose_methods(
    origins: Sequence[OriginResult], *, panel: Panel, methods: tuple, forced: str, level: float, date_column: str
) -> Choice:
    """Score every method at every origin, pick one per target and calibrate the intervals on its errors."""
    weights = fitted_blends(origins, methods, len(panel.targets))
    per_series, figures, selection = score_backtest(
        origins, targets=panel.targets, methods=methods, forced=forced, weights=weights
    )
    conformal, intervals, bounds, kind = backtest_intervals(origins, selection, level)
    intervals["intervals_by_method"] = method_intervals(
        origins, methods=methods, targets=panel.targets, level=level, weights=weights, kind=kind
    )
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
    return Choice(selection, per_series, figures | intervals, conformal, kind, frame)
