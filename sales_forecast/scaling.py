"""How values enter the model: the targets divided by the drivers' effect and scaled per series, the drivers scaled."""

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tsfm_public import TimeSeriesPreprocessor

from sales_forecast.panel import Panel, is_share, joined_ids

logger = logging.getLogger(__name__)

RIDGE = 1e-3  # the drivers' effect: ridge penalty, relative to the drivers' mean sum of squares
SERIES_PRIOR_WEEKS = 52  # a series' own effect: the pooled one counts as this many weeks of the panel's average
MAX_LOG_EFFECT = 3.0  # the drivers' factor stays within exp(-3)..exp(3) (0.05..20)
EFFECT_BLOCK = 4096  # series per block when the effect is fitted (memory)


def scaler_frame(panel: Panel, rows: np.ndarray) -> pd.DataFrame:
    """The long frame TimeSeriesPreprocessor.train reads: id columns, date, targets of the (series, week) rows."""
    rows_s, rows_t = np.nonzero(rows)
    frame = panel.keys.iloc[rows_s].reset_index(drop=True)
    frame["date"] = panel.dates[rows_t]
    frame[list(panel.targets)] = panel.values[rows_s, rows_t]
    return frame


def _fit_rows(panel: Panel, fit_end: np.ndarray) -> np.ndarray:
    """(series, weeks) True on each series' weeks from its start to before fit_end[s]: what scalers are fitted on."""
    t = np.arange(len(panel.dates))
    return (t >= panel.start[:, None]) & (t < fit_end[:, None])


def fit_group_scaler(panel: Panel, *, fit_end: np.ndarray) -> TimeSeriesPreprocessor:
    """granite-tsfm's per product-UF standard scaler, fitted on each series' weeks before fit_end[s].

    TimeSeriesPreprocessor.train (the twin; a test compares them) fits one sklearn scaler per series: 2.4 s for 2,000
    series, 79 s for 50,000, and every backtest origin fits twice. Here train sets the preprocessor up on one series
    and the statistics of all series are computed at once, then stored as the scalers train would have fitted.
    """
    rows = _fit_rows(panel, fit_end)
    n = rows.sum(1)
    tsp = TimeSeriesPreprocessor(
        timestamp_column="date",
        id_columns=list(panel.keys.columns),
        target_columns=list(panel.targets),
        scaling=True,
        scaler_type="standard",
        freq="W",
        encode_categorical=False,
    )
    tsp.train(scaler_frame(panel, rows & (np.arange(len(n)) == np.argmax(n > 0))[:, None]))
    mean, var, scale = _standard_stats(panel.values, rows)
    scaler_class, names = tsp._get_scaler_class(tsp.scaler_type), np.array(panel.targets, dtype=object)
    for s, key in enumerate(panel.keys.itertuples(index=False, name=None)):
        if n[s]:
            scaler = scaler_class(**tsp.scaler_args)
            scaler.mean_, scaler.var_, scaler.scale_, scaler.n_samples_seen_ = mean[s], var[s], scale[s], n[s]
            scaler.n_features_in_, scaler.feature_names_in_ = len(names), names
            tsp.target_scaler_dict[key if len(key) > 1 else key[0]] = scaler
    return tsp


def _standard_stats(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and scale (series, targets) of sklearn's StandardScaler fitted on each series' rows weeks."""
    n = rows.sum(1)[:, None]
    weights = rows[..., None] / np.maximum(n, 1)[..., None]
    mean = (values * weights).sum(1)
    var = ((values - mean[:, None]) ** 2 * weights).sum(1)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
    return mean, var, np.where(constant, 1.0, np.sqrt(var))


@dataclass(frozen=True)
class Scaling:
    """Per-series standard scaling, (series, targets) arrays: the one scale/unscale pair of training and predict."""

    mean: np.ndarray
    scale: np.ndarray
    known: np.ndarray  # (series,) True where the fitted preprocessor knows the series
    factor: np.ndarray | None = None  # (series, weeks + future weeks, targets) DriverScaling.factor; None: 1

    def apply(self, values: np.ndarray) -> np.ndarray:
        """values (series, weeks, targets) in scaled units, divided by the drivers' factor first: what
        tsp.preprocess gives (of the divided values), as one array operation."""
        return (divided(values, self.factor) - self.mean[:, None]) / self.scale[:, None]

    def invert(self, scaled: np.ndarray, windows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Scaled forecasts (windows, horizon, targets) of the (series, first forecast week) windows back in
        original units, times the drivers' factor of the weeks forecast, clipped at 0 (sales and revenue cannot be
        negative)."""
        series, cuts = windows
        out = scaled * self.scale[series, None] + self.mean[series, None]
        if self.factor is not None:
            out = out * self.factor[series[:, None], cuts[:, None] + np.arange(scaled.shape[1])]
        return np.clip(out, 0, None)


def divided(values: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """values (series, weeks, targets) divided by the drivers' factor (series, weeks [+ future weeks], targets) of the
    same series and weeks; as they are without a factor."""
    return values if factor is None else values / factor[:, : values.shape[1]]


@dataclass(frozen=True)
class SeriesScalers:
    """The fitted per-series scalers as arrays, saved as scalers.npz beside preprocessor.pkl (granite-tsfm's
    TimeSeriesPreprocessor, the twin): predict reads them from it instead of unpickling one sklearn scaler per
    series, 3.8 s for 100,000 series (tests/benchmarks/bench_predict.py)."""

    keys: pd.DataFrame  # one row per known series: its id columns (text)
    mean: np.ndarray  # (series, targets)
    scale: np.ndarray

    @classmethod
    def of(cls, tsp: TimeSeriesPreprocessor) -> "SeriesScalers":
        keys = [key if isinstance(key, tuple) else (key,) for key in tsp.target_scaler_dict]
        scalers = tsp.target_scaler_dict.values()
        mean, scale = np.array([s.mean_ for s in scalers]), np.array([s.scale_ for s in scalers])
        return cls(pd.DataFrame(keys, columns=tsp.id_columns, dtype=object), mean, scale)

    @functools.cached_property
    def index(self) -> pd.Index:
        return joined_ids(self.keys, self.keys.columns)

    def save(self, path: Path) -> None:
        keys, columns = self.keys.to_numpy(str), np.array(self.keys.columns, dtype=str)
        np.savez(path, keys=keys, columns=columns, mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: Path) -> "SeriesScalers":
        with np.load(path) as saved:
            keys = pd.DataFrame(saved["keys"], columns=saved["columns"], dtype=object)
            return cls(keys, saved["mean"], saved["scale"])


def panel_scaling(
    fitted: TimeSeriesPreprocessor | SeriesScalers, panel: Panel, factor: np.ndarray | None = None
) -> Scaling:
    """The fitted scalers of the panel's series; a series the preprocessor does not know gets its own history's
    (divided by the drivers' factor, as the fitted ones were)."""
    scalers = fitted if isinstance(fitted, SeriesScalers) else SeriesScalers.of(fitted)
    row = scalers.index.get_indexer(joined_ids(panel.keys, scalers.keys.columns))
    known = row >= 0
    mean = np.where(known[:, None], scalers.mean[row], 0.0)
    scale = np.where(known[:, None], scalers.scale[row], 1.0)
    new = np.flatnonzero(~known & (panel.start < len(panel.dates)))  # a series with no week yet keeps (0, 1)
    values = divided(panel.values[new], None if factor is None else factor[new])
    own = _standard_stats(values, _fit_rows(panel, np.full(len(panel.keys), len(panel.dates)))[new])
    mean[new], scale[new] = own[0], own[2]
    return Scaling(mean, scale, known, factor)


@dataclass(frozen=True)
class DriverScaling:
    """How drivers enter the model (drivers.pkl beside preprocessor.pkl), fitted on training weeks.

    Flags and shares (values 0..1) enter as they are. Any other driver enters relative to the series' own level:
    log(value) for positive ones such as prices (a 20% price cut is -0.22 in every series), minus the series'
    training mean, divided by one spread pooled over all series. A per-series standard scaler (granite-tsfm's,
    used for the targets) would blow a rare promotion up to 10+ and a nearly flat price cut to -20 or more.
    Categories: each categorical column's training values; in predict mode an unseen value gets code len(values).

    The drivers' effect (DRIVER_EFFECT): TTM reads each window through its own mean and spread and adds the
    drivers' part in those units, so a promotion that lifts sales by half is a different number in every window, and
    the backbone reads a history in which weeks with and without it are mixed. Instead, the targets are divided by
    factor = exp((drivers as the model reads them - centre) @ effect) before scaling and every TTM forecast is
    multiplied by the factor of its weeks: log(target) = series level + effect . drivers (regression with TTM
    errors). The effect is fitted by least squares on every series' training weeks at once, and each series' own
    effect shrunk towards it (the pooled effect weighs as SERIES_PRIOR_WEEKS weeks of the series' own data); what a
    series' own effect adds stays within what it added over the series' training weeks (a price the series never
    had is not extrapolated by its own slope). The fine-tuned forecast channel mixing still reads the drivers and
    learns what the factor leaves.
    """

    kinds: tuple  # per driver: "share", "log" or "level"
    offset: dict  # series key -> (drivers,) training mean of the transformed driver (0 for shares)
    spread: np.ndarray  # (drivers,) pooled standard deviation of the centred driver (1 for shares)
    categories: dict  # categorical column -> tuple of its training values
    effect: np.ndarray | None = None  # (drivers, targets) pooled log effect per unit; None: off (or an older folder)
    centre: np.ndarray | None = None  # (drivers,) training mean of the drivers as the model reads them
    own: dict = dataclasses.field(default_factory=dict)  # series key -> (its effect minus the pooled one, (2, targets)
    # lowest and highest log factor that difference gave over the series' training weeks)

    def factor(self, panel: Panel, encoded: np.ndarray) -> np.ndarray | None:
        """(series, weeks, targets) what the panel's drivers, as apply gives them (encoded), multiply its targets by,
        relative to the drivers' training mean: pooled effect plus the series' own part within its training range
        (a series the scaling does not know: the pooled effect); None without an effect."""
        if self.effect is None:
            return None
        centred = encoded - self.centre
        none = (np.zeros_like(self.effect), np.zeros((2, self.effect.shape[1])))
        own = [self.own.get(key, none) for key in panel.keys.itertuples(index=False, name=None)]
        slope, bounds = np.array([o[0] for o in own]), np.array([o[1] for o in own])
        part = np.clip(np.einsum("swd,sdt->swt", centred, slope), bounds[:, None, 0], bounds[:, None, 1])
        return np.exp(np.clip(centred @ self.effect + part, -MAX_LOG_EFFECT, MAX_LOG_EFFECT))

    def apply(self, panel: Panel) -> tuple[np.ndarray, np.ndarray | None]:
        """The panel's drivers as the model reads them, and its series' category codes (series, columns) or None.
        A series the scaling does not know is centred on its own weeks."""
        raw = _driver_transform(panel.drivers, self.kinds)
        keys = list(panel.keys.itertuples(index=False, name=None))
        offset = np.array([self.offset.get(key, np.full(len(self.kinds), np.nan)) for key in keys])
        own = raw[:, : len(panel.dates)].mean(1)
        offset = np.where(np.isnan(offset), own, offset).reshape(len(keys), len(self.kinds))
        codes = None
        if self.categories:
            codes = np.stack(
                [
                    pd.Index(values).get_indexer(panel.keys[column].astype(str)) % (len(values) + 1)
                    for column, values in self.categories.items()
                ],
                axis=1,
            )
        return ((raw - offset[:, None]) / self.spread).astype(np.float32), codes


def _driver_transform(drivers: np.ndarray, kinds: tuple) -> np.ndarray:
    """Drivers of kind "log" (positive levels such as prices) as logs, the others as they are."""
    return np.where(np.array([kind == "log" for kind in kinds]), np.log(np.maximum(drivers, 1e-9)), drivers)


def fit_driver_scaling(panel: Panel, *, fit_end: np.ndarray, effect: bool = False) -> DriverScaling:
    """DriverScaling of the panel's drivers and categories, from each series' weeks before fit_end[s]; effect: with
    the drivers' effect on the targets (DRIVER_EFFECT)."""
    rows = _fit_rows(panel, fit_end)
    seen = panel.drivers[:, : len(panel.dates)][rows]  # (rows, drivers)
    share = is_share(seen)
    kinds = tuple("share" if sh else "log" if seen[:, c].min() > 0 else "level" for c, sh in enumerate(share))
    raw = _driver_transform(panel.drivers[:, : len(panel.dates)], kinds)
    n = np.maximum(rows.sum(1), 1)[:, None]
    mean = np.where(share, 0.0, (raw * rows[..., None]).sum(1) / n)
    spread = np.where(share, 1.0, np.sqrt(((raw - mean[:, None]) ** 2)[rows].mean(0)) if rows.any() else 1.0)
    spread = np.where(spread > 1e-9, spread, 1.0)
    keys = panel.keys.itertuples(index=False, name=None)
    offset = {key: mean[s] for s, key in enumerate(keys)}
    categories = {c: tuple(sorted(panel.keys[c].astype(str).unique())) for c in panel.categorical}
    logger.debug("Driver scaling: %s", dict(zip(panel.driver_names, zip(kinds, spread.round(4)))))
    scaling = DriverScaling(kinds, offset, spread, categories)
    if not effect or not panel.driver_specs:
        return scaling
    return _with_effect(scaling, panel, rows)


def _with_effect(scaling: DriverScaling, panel: Panel, rows: np.ndarray) -> DriverScaling:
    """The scaling with the drivers' effect: log(target) on the drivers as the model reads them, each side centred
    on its series' mean, least squares over the rows weeks where every target is > 0 and no data gap was filled in
    (a week closed or without sales says nothing of a multiplicative effect): pooled over every series (with a 0.1%
    ridge), then per series with the pooled effect as the prior."""
    encoded = scaling.apply(panel)[0][:, : len(panel.dates)]
    rows = rows & (panel.values > 0).all(2) & (True if panel.gap is None else ~panel.gap)
    if not rows.any():
        return scaling
    blocks = [slice(b, b + EFFECT_BLOCK) for b in range(0, len(rows), EFFECT_BLOCK)]
    equations = [_normal_equations(encoded[b], panel.values[b], rows[b]) for b in blocks]
    gram_s, cross_s = np.concatenate([e[0] for e in equations]), np.concatenate([e[1] for e in equations])
    gram = gram_s.sum(0)
    gram = gram + RIDGE * np.diag(gram).mean() * np.eye(len(gram))
    effect = np.linalg.solve(gram, cross_s.sum(0))
    prior = SERIES_PRIOR_WEEKS * gram / rows.sum()
    slope = np.linalg.solve(gram_s + prior, cross_s + prior @ effect) - effect  # (series, drivers, targets)
    centre = (encoded * rows[..., None]).sum((0, 1), dtype=np.float64) / rows.sum()
    bounds = np.concatenate([_own_range(encoded[b] - centre, slope[b], rows[b]) for b in blocks])
    keys = panel.keys.itertuples(index=False, name=None)
    logger.info(
        "Drivers' effect on the targets (log per unit as the model reads them), divided out before TTM: %s",
        {name: dict(zip(panel.targets, effect[d].round(3).tolist())) for d, name in enumerate(panel.driver_names)},
    )
    own = {key: (slope[s], bounds[s]) for s, key in enumerate(keys)}
    return dataclasses.replace(scaling, effect=effect, centre=centre, own=own)


def _normal_equations(encoded: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per series: X'X (drivers, drivers) and X'y (drivers, targets) of the rows weeks, X the drivers and y the log
    targets, each centred on the series' mean over those weeks."""
    n = np.maximum(rows.sum(1), 1)[:, None, None]
    x = encoded.astype(np.float64) * rows[..., None]
    x = (x - x.sum(1, keepdims=True) / n) * rows[..., None]
    y = np.log(np.where(rows[..., None], values, 1.0))
    y = (y - y.sum(1, keepdims=True) / n) * rows[..., None]
    return np.einsum("swd,swe->sde", x, x), np.einsum("swd,swt->sdt", x, y)


def _own_range(centred: np.ndarray, slope: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(series, 2, targets) lowest and highest log factor the series' own slope gave over its rows weeks (0, 0
    without any)."""
    part = np.einsum("swd,sdt->swt", centred, slope)
    low = np.where(rows[..., None], part, np.inf).min(1)
    high = np.where(rows[..., None], part, -np.inf).max(1)
    return np.stack([np.where(rows.any(1)[:, None], low, 0.0), np.where(rows.any(1)[:, None], high, 0.0)], axis=1)


@dataclass(frozen=True)
class ScaledPanel:
    """The weekly panel, its scaling and the scaled values the model reads."""

    panel: Panel
    scaling: Scaling
    values: np.ndarray  # scaling.apply(panel.values)
    drivers: np.ndarray | None = None  # DriverScaling.apply: (series, weeks + future weeks, drivers)
    categories: np.ndarray | None = None  # (series, categorical columns) codes


def scale_panel(
    panel: Panel, fitted: TimeSeriesPreprocessor | SeriesScalers, drivers: DriverScaling | None = None
) -> ScaledPanel:
    """The panel in the scaled units of the fitted scalers (unknown series: their own history), divided by the
    drivers' factor where the driver scaling has an effect, and its drivers and categories as the model reads them."""
    return _scaled(panel, fitted, *_model_drivers(panel, drivers))


def _model_drivers(panel: Panel, drivers: DriverScaling | None) -> tuple:
    """(drivers as the model reads them, category codes, the drivers' factor), each None where there is none."""
    if not drivers or not (panel.driver_specs or panel.categorical):
        return None, None, None
    encoded, codes = drivers.apply(panel)
    return encoded, codes, drivers.factor(panel, encoded)


def _scaled(panel: Panel, fitted: TimeSeriesPreprocessor | SeriesScalers, encoded, codes, factor) -> ScaledPanel:
    """scale_panel given the drivers as _model_drivers reads them (fit_and_scale reads them once for both steps)."""
    scaling = panel_scaling(fitted, panel, factor)
    return ScaledPanel(panel, scaling, scaling.apply(panel.values), encoded, codes)


def fit_and_scale(
    panel: Panel, *, fit_end: np.ndarray, driver_effect: bool
) -> tuple[tuple[TimeSeriesPreprocessor, DriverScaling], ScaledPanel]:
    """The one fit-and-scale step of every training (backtest origins and the final refit): driver scaling (with
    the drivers' effect: driver_effect) and target scalers (of the targets divided by it) fitted on each series'
    weeks before fit_end[s], and the panel scaled by them."""
    drivers = fit_driver_scaling(panel, fit_end=fit_end, effect=driver_effect)
    encoded, codes, factor = _model_drivers(panel, drivers)
    tsp = fit_group_scaler(dataclasses.replace(panel, values=divided(panel.values, factor)), fit_end=fit_end)
    return (tsp, drivers), _scaled(panel, tsp, encoded, codes, factor)
