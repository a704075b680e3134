"""The weekly panel: sales rows summed into weeks on one calendar, one row of arrays per product x UF series."""

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from sales_forecast.sales_csv import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Driver:
    """A known-future input channel: a control column, whose values the data and the future file give, or one that
    the run computes for any week (holiday flags)."""

    name: str
    computed: bool = False
    carried: bool = False  # a level (price): a week without rows carries the last value; a flag or share gets 0


@dataclass(frozen=True)
class Panel:
    """Weekly series on one calendar: values[s, t, c] is target c of series s in week dates[t]."""

    keys: pd.DataFrame  # one row per series: the id columns (text)
    dates: pd.DatetimeIndex  # week-end dates, consecutive weeks
    values: np.ndarray  # (series, weeks, targets) float64, 0 before a series starts
    start: np.ndarray  # (series,) index of each series' first week
    targets: tuple
    drivers: np.ndarray | None = None  # (series, weeks [+ future weeks], drivers) known-future inputs, raw units
    driver_specs: tuple[Driver, ...] = ()  # control columns, then the computed ones (holiday flags)
    categorical: tuple = ()  # id columns the model reads as static categories
    gap: np.ndarray | None = None  # (series, weeks) weeks of data gaps, interpolated (data_gaps); None: no gaps

    @property
    def driver_names(self) -> tuple:
        return tuple(driver.name for driver in self.driver_specs)

    @property
    def control_columns(self) -> tuple:
        """The drivers read from the data and the future file (what predict mode asks the future file for)."""
        return tuple(driver.name for driver in self.driver_specs if not driver.computed)


def is_share(values: np.ndarray) -> np.ndarray:
    """The one rule for a driver's kind, per column of values (rows, drivers): True for flags and shares (every
    value within 0..1), which enter as they are and are 0 in a week without rows; False for levels such as prices,
    which are carried into such weeks and enter relative to the series' own level."""
    return (values.min(0, initial=0) >= 0) & (values.max(0, initial=0) <= 1)


def panel_until(panel: Panel, end: int) -> Panel:
    """The panel as it was before week `end`: what a backtest origin may read (drivers are known ahead, so their
    later weeks stay: a window's future weeks read them). A data gap still open at `end` is what it was then: weeks
    without rows (targets 0, control columns as resample_weekly fills such weeks), since its interpolation reads the
    week its rows came back."""
    values, drivers, gap = panel.values[:, :end], panel.drivers, panel.gap
    if gap is not None and gap[:, end - 1].any():
        values, gap = values.copy(), gap.copy()
        drivers = drivers.copy() if panel.driver_specs else drivers
        for s in np.flatnonzero(gap[:, end - 1]):
            begin = end - np.argmin(gap[s, end - 1 :: -1])  # the run's first week (rows before it: data_gaps)
            after = begin + np.argmin(gap[s, begin:])  # its first week with rows again
            values[s, begin:end] = 0
            for d, driver in enumerate(panel.driver_specs):
                if not driver.computed:
                    drivers[s, begin:after, d] = drivers[s, begin - 1, d] if driver.carried else 0
            gap[s, begin:after] = False
    return dataclasses.replace(panel, dates=panel.dates[:end], values=values, drivers=drivers, gap=gap)


def panel_series(panel: Panel, series: np.ndarray) -> Panel:
    """The panel of these series only (indices, in this order): panel_until's twin along the series axis."""
    return dataclasses.replace(
        panel,
        keys=panel.keys.iloc[series].reset_index(drop=True),
        values=panel.values[series],
        start=panel.start[series],
        drivers=None if panel.drivers is None else panel.drivers[series],
        gap=None if panel.gap is None else panel.gap[series],
    )


def week_end(day: np.ndarray, anchor: str) -> np.ndarray:
    """Days (since 1970-01-01, a Thursday) moved to the last day of their week ending on the anchor's weekday."""
    return day + (pd.tseries.frequencies.to_offset(anchor).weekday - (day + 3) % 7) % 7


def _week_anchor(day_of_week: np.ndarray, anchor: str) -> str:
    if anchor != "auto":
        return anchor
    days = np.flatnonzero(np.bincount(day_of_week, minlength=7))
    return "W-" + ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")[days[0]] if len(days) == 1 else "W-SUN"


def resample_weekly(
    df: pd.DataFrame,
    *,
    date_column: str,
    id_columns: Sequence[str],
    target_columns: Sequence[str],
    control_columns: Sequence[str] = (),
    anchor: str = "auto",
    source: str = "data",
    span: tuple[np.datetime64, np.datetime64] | None = None,
    gap_weeks: int = 0,
) -> tuple[Panel, str]:
    """Sum rows into weeks (one anchor for all), fill missing weeks with 0; return the panel and the anchor used.
    span: the first and last date of the whole file when df holds a part of its series (all parts get its weeks).
    gap_weeks: runs of weeks without rows that are missing data, not 0 (data_gaps): interpolated, targets and controls.

    Control columns are averaged over a week's rows; a week without rows gets 0 in a flag or share column and the
    last known value in any other (prices are carried): is_share decides.

    Integer week numbers and np.bincount instead of groupby + resample (the twin; a test compares them): 0.08 s
    instead of 0.4 s on 2,000 series x 260 weeks (tests/benchmarks/bench_predict.py).
    """
    ids, targets = list(id_columns), list(target_columns)
    day = df[date_column].to_numpy("datetime64[D]").astype(np.int64)  # days since 1970-01-01, a Thursday
    day_of_week = (day + 3) % 7  # Monday = 0
    anchor = _week_anchor(day_of_week, anchor)
    ends = week_end(day, anchor)
    first, last = ends.min(), ends.max()
    if span:  # a part of a larger file: the whole file's weeks
        first, last = week_end(np.array(span, "datetime64[D]").astype(np.int64), anchor)
    col = (ends - first) // 7
    codes = df.groupby(ids, sort=True, observed=True).ngroup().to_numpy()
    by_series = np.argsort(codes, kind="stable")  # file order inside each series
    same_series = np.diff(codes[by_series]) == 0
    keys = df[ids].iloc[by_series[np.r_[True, ~same_series]]].reset_index(drop=True).astype(object)  # text ids
    n_series, n_weeks = len(keys), int(last - first) // 7 + 1
    out_of_order = int((same_series & (np.diff(day[by_series]) < 0)).sum())
    if out_of_order:
        logger.warning("%s: %d rows were out of date order within their series; sorted", source, out_of_order)
    by_day = np.sort(codes * (day.max() - day.min() + 1) + day, kind="stable")  # linear on a file in series order
    duplicated = int((np.diff(by_day) == 0).sum())
    if duplicated:
        logger.warning("%s: %d duplicate (date, %s) rows were summed", source, duplicated, ", ".join(ids))
    cell = codes * n_weeks + col
    values = np.stack(
        [np.bincount(cell, weights=df[t].to_numpy(), minlength=n_series * n_weeks) for t in targets], axis=-1
    ).reshape(n_series, n_weeks, len(targets))
    present = (np.bincount(cell, minlength=n_series * n_weeks) > 0).reshape(n_series, n_weeks)
    rows_s, rows_t = np.nonzero(present)
    gaps = np.diff(rows_t)[np.diff(rows_s) == 0]  # weeks between consecutive weeks with rows, inside each series
    if len(gaps) and np.median(gaps) >= 2:
        raise InputError(
            f"{source}: column {date_column!r}: rows are {7 * np.median(gaps):.0f} days apart (median), "
            "which looks monthly; this tool needs weekly or daily rows"
        )
    start = present.argmax(axis=1)
    controls, carried = _weekly_controls(df, list(control_columns), cell, present)
    dates = pd.date_range(pd.Timestamp(first, unit="D"), periods=n_weeks, freq=anchor)
    gap = data_gaps(present, gap_weeks)
    if gap.any():
        values, controls = _interpolated(values, gap), _interpolated(controls, gap)
        logger.warning(
            "%s: %d series have %d weeks without rows in runs of %d weeks or more, where the year before had rows: "
            "read as missing data (a break in the records or a closure), interpolated between the weeks around "
            "them, not as weeks without sales (GAP_WEEKS=0 reads them as 0): %s",
            source,
            gap.any(1).sum(),
            gap.sum(),
            gap_weeks,
            keys[gap.any(1)].head(5).to_dict("records"),
        )
    filled = int((n_weeks - start).sum() - len(rows_s) - gap.sum())
    all_zero = ~values.any(axis=(1, 2))
    if all_zero.any():
        logger.warning(
            "%s: %d series have only zeros; kept (their forecast will be about 0): %s",
            source,
            all_zero.sum(),
            keys[all_zero].head(5).to_dict("records"),
        )
    logger.info(
        "Weekly (%s): %d series x %d weeks (%s to %s); %d input rows -> %d series-weeks, %d missing weeks set to 0",
        anchor,
        n_series,
        n_weeks,
        dates[0].date(),
        dates[-1].date(),
        len(df),
        len(rows_s),
        filled,
    )
    specs = tuple(Driver(column, carried=c) for column, c in zip(control_columns, carried, strict=True))
    gaps = gap if gap.any() else None
    return Panel(keys, dates, values, start, tuple(target_columns), controls, specs, gap=gaps), anchor


def data_gaps(present: np.ndarray, gap_weeks: int) -> np.ndarray:
    """(series, weeks) True in each run of at least gap_weeks weeks without rows between two weeks with rows where
    most of the same weeks a year (52 weeks) before had rows: data missing, not weeks without sales. A seasonal
    product's yearly break had no rows a year before either, and shorter runs are slow weeks (0); gap_weeks 0: none."""
    gap = np.zeros_like(present)
    if not gap_weeks:
        return gap
    edges = np.diff(np.pad(~present, ((0, 0), (1, 1))).astype(np.int8), axis=1)  # +1: a run starts, -1: it ended
    (series, begin), (_, end) = np.nonzero(edges == 1), np.nonzero(edges == -1)  # row-major: the pairs align
    long = (begin > present.argmax(1)[series]) & (end < present.shape[1]) & (end - begin >= gap_weeks)  # inside
    for s, b, e in zip(series[long], begin[long], end[long], strict=True):
        if 2 * present[s, max(b - 52, 0) : max(e - 52, 0)].sum() > e - b:  # rows in most weeks a year before
            gap[s, b:e] = True
    return gap


def _interpolated(values: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """values (series, weeks, columns) with the gap weeks on the line between the weeks before and after each run."""
    out = values.copy()
    for s in np.flatnonzero(gap.any(1)):
        weeks = pd.DataFrame(values[s])
        weeks.loc[gap[s]] = np.nan
        out[s] = weeks.interpolate().to_numpy()
    return out


def _weekly_controls(
    df: pd.DataFrame, columns: list[str], cell: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, list[bool]]:
    """(series, weeks, controls): the mean of each week's rows, weeks without rows as resample_weekly documents; and
    per column whether it is carried into such weeks (a level: is_share says no)."""
    n_series, n_weeks = present.shape
    counts = np.maximum(np.bincount(cell, minlength=n_series * n_weeks), 1)
    out = np.zeros((n_series, n_weeks, len(columns)))
    last = np.maximum.accumulate(np.where(present, np.arange(n_weeks), -1), axis=1)  # last week with rows
    last = np.where(last < 0, present.argmax(1)[:, None], last)  # (the first one before it)
    carried = []
    for c, column in enumerate(columns):
        raw = df[column].to_numpy(float)
        mean = (np.bincount(cell, weights=raw, minlength=n_series * n_weeks) / counts).reshape(n_series, n_weeks)
        carried.append(not is_share(raw[:, None])[0])
        if carried[-1]:  # a price or level
            mean = np.take_along_axis(mean, last, axis=1)
        out[..., c] = mean
    return out, carried


def joined_ids(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Index:
    """One text per row: the row's id columns joined, to look series up with pd.Index.get_indexer."""
    first, *rest = columns
    return pd.Index(frame[first].astype(str).str.cat([frame[c].astype(str) for c in rest], sep="\x1f"))


def series_index(keys: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Index in keys of each row's series (id columns compared as text), -1 for a series keys do not have."""
    return joined_ids(keys, keys.columns).get_indexer(joined_ids(rows, keys.columns))
