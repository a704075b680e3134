"""Fine-tune IBM's TinyTimeMixer (TTM) on weekly sales (vendas) and revenue (faturamento) per product x UF.

    python ttm_model.py                                        # train, evaluate, forecast (synthetic data if no CSV)
    python ttm_model.py --help                                 # every setting, its default and meaning
    python ttm_model.py --DATA_PATH=dados/minha_base.csv --TARGET_COLUMNS=faturamento
    python ttm_model.py --PRETRAINED_MODEL=../shared/ttm-weights/ttm-90-30-ft-l1   # local model folder, offline
    python ttm_model.py --MODE=predict --DATA_PATH=novos.csv   # forecast with final_ttm_model/, no training

Sections: (1) load, (2) weekly resampling + per product-UF scaling, (3) split, (4) model, (5) train; then
(6) evaluation against baselines, (7) the forecast of the next PREDICTION_LENGTH weeks and (8) the saved model.
Settings: config.py. CSV reading and writing: sales_csv.py. Metrics, baselines and plots: evaluation.py.
"""

import contextlib
import copy
import dataclasses
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, Sequence

import holidays
import numpy as np
import pandas as pd
import torch
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from tsfm_public import TimeSeriesPreprocessor
from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerGatedAttention
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor
from tsfm_public.toolkit.get_model import get_model
from tsfm_public.toolkit.time_series_preprocessor import DEFAULT_FREQUENCY_MAPPING
from tsfm_public.toolkit.util import count_parameters

import config
from evaluation import (
    BLENDS,
    baseline_forecasts,
    blend,
    evaluate_methods,
    mase_scale,
    mean_over_origins,
    metric_table,
    plot_results,
    select_methods,
    with_blends,
    write_metrics,
)
from sales_csv import ForecastCsv, InputError, estimated_rows, read_sales_csv, split_sales_csv, write_forecasts

logger = logging.getLogger("ttm_model")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What the backtest chooses from, per target; on a tie the earlier one (identical forecasts: no fine-tuning needed).
CANDIDATES = ("zero_shot", "fine_tuned", "seasonal_naive", "naive", *BLENDS)
HOLIDAY_CHANNEL = "holiday_flag"  # the driver computed from HOLIDAY_COUNTRY
# Blocks that drivers and categories add to the pretrained TTM; always trained (they start at zero output).
DRIVER_BLOCKS = ("head.fcm_block", "decoder*channel_feature_mixer", "decoder_cat_embedding")
SYNTHETIC_CONTROLS = ("preco", "promocao")  # the synthetic panel's driver columns
PACKAGES = ("torch", "transformers", "granite-tsfm", "pandas", "numpy", "scikit-learn")


# ---- 1. load ------------------------------------------------------------------------------------------------------


def synthesize_sales(
    *,
    seed: int,
    date_column: str,
    id_columns: Sequence[str],
    target_columns: Sequence[str],
    n_products: int = 8,
    ufs: Sequence[str] = ("SP", "RJ", "MG", "RS", "PR", "BA"),
    n_weeks: int = 260,
    future_weeks: int = 26,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A realistic weekly panel: trend, yearly season, promotions, a drifting price, new and intermittent series.

    Named as the settings ask: 1 id column (product-UF), 2 (product, UF) or 3 (product, UF, channel); targets in
    order units, revenue, then revenue x 0.3 (a margin) for any further target. Drivers: "preco" (the shelf price,
    20% off in promotion weeks) and "promocao" (1 in promotion weeks, which sell 1.8x). Returns the sales and the
    future file: the drivers planned for the `future_weeks` weeks after the last date, every series.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end="2025-12-28", periods=n_weeks, freq="W-SUN").append(
        pd.date_range(start="2026-01-04", periods=future_weeks, freq="W-SUN")
    )
    week = np.arange(n_weeks + future_weeks)
    frames, futures = [], []
    for p in range(n_products):
        price0 = rng.uniform(5, 80)
        for u, uf in enumerate(ufs):
            level = rng.lognormal(3.5, 0.7) * (1.0 - 0.12 * u)
            season = 1 + rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (week + rng.integers(52)) / 52.18)
            christmas = 1 + 0.5 * (dates.isocalendar().week.to_numpy() >= 50)
            promo = rng.random(len(week)) < 0.07
            price = np.round(price0 * (1.0008 + rng.normal(0, 0.0004)) ** week * np.where(promo, 0.8, 1.0), 2)
            rate = level * (1 + rng.normal(0.002, 0.002) * week) * season * christmas * np.where(promo, 1.8, 1.0)
            if (p + u) % 13 == 5:  # intermittent: slow movers with many zero weeks
                rate = rate * 0.02
            units = rng.poisson(np.clip(rate, 0, None)).astype(float)
            start = n_weeks - rng.integers(40, 90) if (p * len(ufs) + u) % 17 == 3 else 0  # a few new launches
            ids = (
                [f"P{p + 1:03d}-{uf}"],
                [f"P{p + 1:03d}", uf],
                [f"P{p + 1:03d}", uf, ("loja", "online")[(p + u) % 2]],
            )
            key = dict(zip(id_columns, ids[len(id_columns) - 1]))
            revenue = np.round(units * price, 2)
            targets = [units, revenue] + [np.round(revenue * 0.3, 2)] * (len(target_columns) - 2)
            frame = pd.DataFrame(
                {date_column: dates, **key, **dict(zip(target_columns, targets)), "preco": price, "promocao": promo}
            ).astype({"promocao": float})
            frames.append(frame.iloc[start:n_weeks])
            futures.append(frame.iloc[n_weeks:].drop(columns=list(target_columns)))
    df = pd.concat(frames, ignore_index=True)
    keep = (df[target_columns[0]] > 0) | (rng.random(len(df)) < 0.5)  # exports often omit weeks without sales
    return df[keep].reset_index(drop=True), pd.concat(futures, ignore_index=True)


def load_sales(
    path: str,
    *,
    columns: dict,
    future_path: str,
    horizon: int,
    seed: int,
    synthetic_dir: Path | None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The user's CSV and, with control columns, the future file; with synthetic_dir given and no file at path, a
    synthetic panel and its future file saved there for inspection (its drivers used when no controls are set).

    columns: date_column, id_columns, target_columns and control_columns as read_sales_csv takes them.
    """
    if synthetic_dir is None or Path(path).exists():
        sales = read_sales_csv(path, **columns)
        future = None
        if columns["control_columns"]:
            future = read_sales_csv(future_path, **columns | {"target_columns": ()}, setting="FUTURE_PATH")
        return sales, future
    names = {k: columns[k] for k in ("date_column", "id_columns", "target_columns")}
    sales, future = synthesize_sales(seed=seed, future_weeks=horizon, **names)
    controls = columns["control_columns"] or SYNTHETIC_CONTROLS
    if set(controls) - set(SYNTHETIC_CONTROLS):
        raise InputError(
            f"CONTROL_COLUMNS={list(controls)}: the synthetic panel (no file at {path}) has only "
            f"{list(SYNTHETIC_CONTROLS)}; give your CSV with --DATA_PATH or use those"
        )
    sales = sales[[*sales.columns[: -len(SYNTHETIC_CONTROLS)], *controls]]
    future = future[[*future.columns[: -len(SYNTHETIC_CONTROLS)], *controls]]
    if is_main_process():
        sales.to_csv(synthetic_dir / "dados_sinteticos.csv", index=False)
        future.to_csv(synthetic_dir / "dados_sinteticos_futuro.csv", index=False)
    logger.warning(
        "SYNTHETIC DATA: %s not found, so training on a synthetic panel (%d rows, %d series, drivers %s), saved "
        "to %s with its future file. Put your CSV at %s or set --DATA_PATH.",
        path,
        len(sales),
        sales.groupby(list(names["id_columns"])).ngroups,
        ", ".join(controls),
        synthetic_dir / "dados_sinteticos.csv",
        path,
    )
    return sales, future


def predict_inputs(
    data_path: str, future_path: str, *, columns: dict, horizon: int, part_rows: int, work_dir: Path
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame | None, tuple | None, str]]:
    """Predict mode's input, one part at a time: (sales rows, future rows or None, span, source) as weekly_panel
    takes them. A CSV of up to part_rows rows is one part; a larger one and its future file are split by series
    into work_dir (deleted after), so memory holds one part whatever the file's size."""
    parts = math.ceil(estimated_rows(data_path) / part_rows)
    if parts <= 1:
        sales, future = load_sales(
            data_path, columns=columns, future_path=future_path, horizon=horizon, seed=0, synthetic_dir=None
        )
        yield sales, future, None, data_path
        return
    check_output_dirs([work_dir], Path(data_path).stat().st_size // 2**20 + 1)  # part files: less than the CSV
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=work_dir) as tmp:
        sales = split_sales_csv(data_path, parts=parts, folder=Path(tmp) / "sales", **columns)
        future = None
        if columns["control_columns"]:
            future = split_sales_csv(
                future_path,
                parts=parts,
                folder=Path(tmp) / "future",
                **columns | {"target_columns": ()},
                setting="FUTURE_PATH",
                dictionaries=sales.dictionaries,
            )
        for i in range(parts):
            rows, ahead = sales.part(i), None if future is None else future.part(i)
            if not len(rows) and ahead is not None and len(ahead):
                raise InputError(
                    f"{future_path}: {len(ahead)} row(s) with series that are not in the data, line(s) "
                    f"{', '.join(map(str, ahead.index[:5] + 2))}; fix or remove them"
                )
            if len(rows):
                yield rows, ahead, (sales.first_day, sales.last_day), f"{data_path} (part {i + 1} of {parts})"


# ---- 2. weekly resampling + per product-UF scaling ----------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """Weekly series on one calendar: values[s, t, c] is target c of series s in week dates[t]."""

    keys: pd.DataFrame  # one row per series: the id columns (text)
    dates: pd.DatetimeIndex  # week-end dates, consecutive weeks
    values: np.ndarray  # (series, weeks, targets) float64, 0 before a series starts
    start: np.ndarray  # (series,) index of each series' first week
    targets: tuple
    drivers: np.ndarray | None = None  # (series, weeks [+ future weeks], drivers) known-future inputs, raw units
    driver_names: tuple = ()  # control columns, then "holiday" when HOLIDAY_COUNTRY is set
    categorical: tuple = ()  # id columns the model reads as static categories


def _week_end(day: np.ndarray, anchor: str) -> np.ndarray:
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
) -> tuple[Panel, str]:
    """Sum rows into weeks (one anchor for all), fill missing weeks with 0; return the panel and the anchor used.
    span: the first and last date of the whole file when df holds a part of its series (all parts get its weeks).

    Control columns are averaged over a week's rows; a week without rows gets 0 in a flag or share column (values
    0..1) and the last known value in any other (prices are carried).

    Integer week numbers and np.bincount instead of groupby + resample: 0.08 s instead of 0.4 s on 2,000 series x
    260 weeks (tests/benchmarks/bench_predict.py); a test checks the result against pandas.
    """
    ids, targets = list(id_columns), list(target_columns)
    day = df[date_column].to_numpy("datetime64[D]").astype(np.int64)  # days since 1970-01-01, a Thursday
    day_of_week = (day + 3) % 7  # Monday = 0
    anchor = _week_anchor(day_of_week, anchor)
    week_end = _week_end(day, anchor)
    first, last = week_end.min(), week_end.max()
    if span:  # a part of a larger file: the whole file's weeks
        first, last = _week_end(np.array(span, "datetime64[D]").astype(np.int64), anchor)
    col = (week_end - first) // 7
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
    controls = _weekly_controls(df, list(control_columns), cell, present)
    dates = pd.date_range(pd.Timestamp(first, unit="D"), periods=n_weeks, freq=anchor)
    filled = int((n_weeks - start).sum() - len(rows_s))
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
    panel = Panel(keys, dates, values, start, tuple(target_columns), controls, tuple(control_columns))
    return panel, anchor


def _weekly_controls(df: pd.DataFrame, columns: list[str], cell: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(series, weeks, controls): the mean of each week's rows; weeks without rows as resample_weekly documents."""
    n_series, n_weeks = present.shape
    counts = np.maximum(np.bincount(cell, minlength=n_series * n_weeks), 1)
    out = np.zeros((n_series, n_weeks, len(columns)))
    last = np.maximum.accumulate(np.where(present, np.arange(n_weeks), -1), axis=1)  # last week with rows
    last = np.where(last < 0, present.argmax(1)[:, None], last)  # (the first one before it)
    for c, column in enumerate(columns):
        raw = df[column].to_numpy(float)
        mean = (np.bincount(cell, weights=raw, minlength=n_series * n_weeks) / counts).reshape(n_series, n_weeks)
        if raw.min() < 0 or raw.max() > 1:  # a price or level: carried
            mean = np.take_along_axis(mean, last, axis=1)
        out[..., c] = mean
    return out


def _joined(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Index:
    """One text per row: the row's id columns joined, to look series up with pd.Index.get_indexer."""
    first, *rest = columns
    return pd.Index(frame[first].astype(str).str.cat([frame[c].astype(str) for c in rest], sep="\x1f"))


def _series_index(keys: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Index in keys of each row's series (id columns compared as text), -1 for a series keys do not have."""
    return _joined(keys, keys.columns).get_indexer(_joined(rows, keys.columns))


def future_controls(panel: Panel, future: pd.DataFrame, *, horizon: int, date_column: str, path: str) -> np.ndarray:
    """(series, horizon, controls) from the future file: one row per series and week after the data's last week.

    Raises:
        InputError: naming the file, the series and weeks that are missing, unknown, outside or repeated.
    """
    anchor = pd.tseries.frequencies.to_offset(panel.dates.freqstr)
    week_end = _week_end(future[date_column].to_numpy("datetime64[D]").astype(np.int64), panel.dates.freqstr)
    last = panel.dates[-1].to_datetime64().astype("datetime64[D]").astype(np.int64)
    week = (week_end - last) // 7 - 1
    lines = future.index.to_numpy() + 2  # file lines (a part of a split file keeps its file rows as index)
    series = _series_index(panel.keys, future)
    weeks = f"the {horizon} weeks {panel.dates[-1] + anchor:%Y-%m-%d}..{panel.dates[-1] + horizon * anchor:%Y-%m-%d}"
    for bad, what in (
        (series < 0, "series that are not in the data"),
        ((week < 0) | (week >= horizon), f"dates outside {weeks}"),
    ):
        if bad.any():
            raise InputError(
                f"{path}: {bad.sum()} row(s) with {what}, line(s) {', '.join(map(str, lines[bad][:5]))} "
                f"(e.g. {future[bad].iloc[0][[date_column, *panel.keys.columns]].astype(str).to_dict()}); fix or "
                "remove them"
            )
    cell = series * horizon + week
    if len(np.unique(cell)) < len(cell):
        repeated = pd.Series(cell).duplicated().to_numpy()
        raise InputError(
            f"{path}: {repeated.sum()} repeated (series, week) row(s), line(s) "
            f"{', '.join(map(str, lines[repeated][:5]))}; keep one row per series and week"
        )
    have = np.zeros(len(panel.keys) * horizon, bool)
    have[cell] = True
    missing = ~have.reshape(len(panel.keys), horizon)
    if missing.any():
        first = np.flatnonzero(missing.any(1))[:5]
        dates = pd.date_range(panel.dates[-1] + anchor, periods=horizon, freq=anchor).strftime("%Y-%m-%d")
        examples = "; ".join(f"{panel.keys.iloc[s].to_dict()} weeks {list(dates[missing[s]][:3])}" for s in first)
        raise InputError(
            f"{path}: {missing.any(1).sum()} series lack rows for some of {weeks}: {examples}; "
            "give every series of the data a row for each of those weeks"
        )
    out = np.zeros((len(panel.keys) * horizon, len(panel.driver_names)))
    out[cell] = future[list(panel.driver_names)].to_numpy(float)
    return out.reshape(len(panel.keys), horizon, -1)


def holiday_flags(keys: pd.DataFrame, dates: pd.DatetimeIndex, country: str) -> np.ndarray:
    """(series, weeks): 1 in weeks (ending on dates) with a public holiday of the country, from the holidays
    package; per state where an id column holds its state codes (UFs for BR), national otherwise."""
    try:
        national = holidays.country_holidays(country)
    except NotImplementedError as err:
        raise InputError(
            f"HOLIDAY_COUNTRY={country}: not a country the holidays package knows; use a code such as BR or US, "
            "or --HOLIDAY_COUNTRY= for no holiday flags"
        ) from err
    codes = {str(c).upper() for c in national.subdivisions}
    state = next((c for c in keys.columns if keys[c].astype(str).str.strip().str.upper().isin(codes).all()), None)
    regions = keys[state].astype(str).str.strip().str.upper() if state else pd.Series("", index=keys.index)
    logger.info("Holiday flags for %s: %s", country, f"per state from column {state!r}" if state else "national")
    years = range(dates[0].year - 1, dates[-1].year + 2)
    week_days = dates.to_numpy("datetime64[D]")[:, None] - np.arange(7)
    flags = np.zeros((len(keys), len(dates)))
    for region in regions.unique():
        days = holidays.country_holidays(country, subdiv=region or None, years=years)
        flags[(regions == region).to_numpy()] = np.isin(week_days, np.array(list(days), "datetime64[D]")).any(1)
    return flags


def add_drivers(
    panel: Panel,
    future: pd.DataFrame | None,
    *,
    horizon: int,
    holiday_country: str,
    categorical: tuple,
    date_column: str,
    future_path: str,
) -> Panel:
    """The panel with its drivers over the data's weeks and the `horizon` weeks after: control columns (future
    from the future file) and the holiday flag; plus the id columns read as categories."""
    controls = panel.drivers
    if controls.shape[2]:
        ahead = future_controls(panel, future, horizon=horizon, date_column=date_column, path=future_path)
        controls = np.concatenate([controls, ahead], axis=1)
    else:
        controls = np.zeros((len(panel.keys), len(panel.dates) + horizon, 0))
    names = panel.driver_names
    if holiday_country:
        dates = pd.date_range(panel.dates[0], periods=len(panel.dates) + horizon, freq=panel.dates.freq)
        controls = np.concatenate([controls, holiday_flags(panel.keys, dates, holiday_country)[..., None]], axis=2)
        names = (*names, HOLIDAY_CHANNEL)
    if names:
        logger.info("Known-future drivers: %s; static categories: %s", ", ".join(names), list(categorical) or "none")
    return dataclasses.replace(panel, drivers=controls, driver_names=names, categorical=categorical)


def _columns(settings: dict) -> dict:
    """The column settings (of config, or of a saved model) as read_sales_csv takes them."""
    return {
        "date_column": settings["DATE_COLUMN"],
        "id_columns": tuple(settings["ID_COLUMNS"]),
        "target_columns": tuple(settings["TARGET_COLUMNS"]),
        "control_columns": tuple(settings.get("CONTROL_COLUMNS", ())),
    }


def _controls(panel: Panel) -> tuple:
    """The panel's control columns: its drivers but the holiday flag."""
    return tuple(name for name in panel.driver_names if name != HOLIDAY_CHANNEL)


def weekly_panel(
    sales: pd.DataFrame,
    future: pd.DataFrame | None,
    *,
    settings: dict,
    source: str,
    span: tuple[np.datetime64, np.datetime64] | None = None,
) -> tuple[Panel, str]:
    """Section 2 for training and predict: the weekly panel with its drivers (the control columns the future file
    has, the holiday flags of settings' HOLIDAY_COUNTRY) and categories; returns it and the week anchor used.
    span: as resample_weekly takes it, for a part of a split file."""
    columns = _columns(settings)
    names = columns["id_columns"]
    columns["control_columns"] = () if future is None else tuple(future.columns[1 + len(names) :])
    panel, anchor = resample_weekly(sales, **columns, anchor=settings["WEEK_ANCHOR"], source=source, span=span)
    panel = add_drivers(
        panel,
        future,
        horizon=settings["PREDICTION_LENGTH"],
        holiday_country=settings.get("HOLIDAY_COUNTRY", ""),
        categorical=tuple(settings.get("CATEGORICAL_COLUMNS", ())),
        date_column=columns["date_column"],
        future_path=settings["FUTURE_PATH"],
    )
    return panel, anchor


def _scaler_frame(panel: Panel, rows: np.ndarray) -> pd.DataFrame:
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
    tsp.train(_scaler_frame(panel, rows & (np.arange(len(n)) == np.argmax(n > 0))[:, None]))
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

    def apply(self, values: np.ndarray) -> np.ndarray:
        """values (series, weeks, targets) in scaled units: what tsp.preprocess gives, as one array operation."""
        return (values - self.mean[:, None]) / self.scale[:, None]

    def invert(self, scaled: np.ndarray, series: np.ndarray) -> np.ndarray:
        """Scaled forecasts (windows, horizon, targets) of the given series back in original units, clipped at 0
        (sales and revenue cannot be negative)."""
        return np.clip(scaled * self.scale[series, None] + self.mean[series, None], 0, None)


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
        return _joined(self.keys, self.keys.columns)

    def save(self, path: Path) -> None:
        keys, columns = self.keys.to_numpy(str), np.array(self.keys.columns, dtype=str)
        np.savez(path, keys=keys, columns=columns, mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: Path) -> "SeriesScalers":
        with np.load(path) as saved:
            keys = pd.DataFrame(saved["keys"], columns=saved["columns"], dtype=object)
            return cls(keys, saved["mean"], saved["scale"])


def panel_scaling(fitted: TimeSeriesPreprocessor | SeriesScalers, panel: Panel) -> Scaling:
    """The fitted scalers of the panel's series; a series the preprocessor does not know gets its own history's."""
    scalers = fitted if isinstance(fitted, SeriesScalers) else SeriesScalers.of(fitted)
    row = scalers.index.get_indexer(_joined(panel.keys, scalers.keys.columns))
    known = row >= 0
    mean = np.where(known[:, None], scalers.mean[row], 0.0)
    scale = np.where(known[:, None], scalers.scale[row], 1.0)
    new = np.flatnonzero(~known & (panel.start < len(panel.dates)))  # a series with no week yet keeps (0, 1)
    own = _standard_stats(panel.values[new], _fit_rows(panel, np.full(len(panel.keys), len(panel.dates)))[new])
    mean[new], scale[new] = own[0], own[2]
    return Scaling(mean, scale, known)


@dataclass(frozen=True)
class DriverScaling:
    """How drivers enter the model (drivers.pkl beside preprocessor.pkl), fitted on training weeks.

    Flags and shares (values 0..1) enter as they are. Any other driver enters relative to the series' own level:
    log(value) for positive ones such as prices (a 20% price cut is -0.22 in every series), minus the series'
    training mean, divided by one spread pooled over all series. A per-series standard scaler (granite-tsfm's,
    used for the targets) would blow a rare promotion up to 10+ and a nearly flat price cut to -20 or more.
    Categories: each categorical column's training values; in predict mode an unseen value gets code len(values).
    """

    kinds: tuple  # per driver: "share", "log" or "level"
    offset: dict  # series key -> (drivers,) training mean of the transformed driver (0 for shares)
    spread: np.ndarray  # (drivers,) pooled standard deviation of the centred driver (1 for shares)
    categories: dict  # categorical column -> tuple of its training values

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


def fit_driver_scaling(panel: Panel, *, fit_end: np.ndarray) -> DriverScaling:
    """DriverScaling of the panel's drivers and categories, from each series' weeks before fit_end[s]."""
    rows = _fit_rows(panel, fit_end)
    seen = panel.drivers[:, : len(panel.dates)][rows]  # (rows, drivers)
    share = (seen.min(0, initial=0) >= 0) & (seen.max(0, initial=0) <= 1)
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
    return DriverScaling(kinds, offset, spread, categories)


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
    """The panel in the scaled units of the fitted scalers (unknown series: their own history), and its drivers and
    categories as the model reads them."""
    scaling = panel_scaling(fitted, panel)
    encoded, codes = drivers.apply(panel) if drivers and (panel.driver_names or panel.categorical) else (None, None)
    return ScaledPanel(panel, scaling, scaling.apply(panel.values), encoded, codes)


# ---- 3. split keeping every product-UF combination -----------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Window cuts of one forecast origin: a window at cut t reads weeks < t and forecasts weeks t .. t+horizon-1.

    The origin sees weeks < end only; its test window is the last `horizon` of them, validation the `horizon` before.
    """

    end: int
    valid_start: int
    test_start: int
    train: tuple[np.ndarray, np.ndarray]  # (series index, cut); targets from valid_start on are masked
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    fit_end: np.ndarray  # per series: scaler fitted on weeks before this (never test weeks of evaluated series)


def training_cuts(first_cut: np.ndarray, *, last: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(series, cut) of windows every `stride` weeks back from cut `last` to each series' first_cut."""
    counts = np.where(first_cut <= last, (last - first_cut) // stride + 1, 0)
    series = np.repeat(np.arange(len(first_cut)), counts)
    cuts = last - stride * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return series, cuts


def split_by_time(panel: Panel, *, end: int, horizon: int, min_context: int, stride: int) -> Split:
    """Cut every series at the same dates for the origin whose test window ends at week `end`.

    Training windows start every `stride` weeks back from the week before validation; their target weeks from
    validation on are masked, so training learns from every week before validation and nothing after.
    """
    test_start, valid_start = end - horizon, end - 2 * horizon
    series = np.arange(len(panel.keys))
    first_cut = panel.start + min_context
    in_test, in_valid = first_cut <= test_start, first_cut <= valid_start
    fit_end = np.where(panel.start < valid_start, valid_start, np.where(panel.start < test_start, test_start, end))
    return Split(
        end,
        valid_start,
        test_start,
        training_cuts(first_cut, last=valid_start - 1, stride=stride),
        (series[in_valid], np.full(in_valid.sum(), valid_start)),
        (series[in_test], np.full(in_test.sum(), test_start)),
        fit_end,
    )


def backtest_splits(panel: Panel, *, origins: int, step: int, settings: "TrainSettings") -> list[Split]:
    """Rolling forecast origins `step` weeks apart (0: the horizon), the last test window ending at the data's last
    week; horizon, minimum context and stride from settings.

    Raises:
        InputError: if the calendar is too short for even the last origin's training, validation and test weeks.
    """
    horizon, min_context, stride = settings.horizon, settings.min_context, settings.stride
    step, n_weeks, need = step or horizon, len(panel.dates), min_context + 2 * horizon + 1
    if n_weeks < need:
        raise InputError(
            f"data cover {n_weeks} weeks; training needs at least {need} "
            f"(MIN_CONTEXT_WEEKS {min_context} + 2 x PREDICTION_LENGTH {horizon} + 1); lower those settings"
        )
    # an earlier origin needs only a test window after min_context weeks; without training windows its fine-tuned
    # forecast is the pretrained one
    ends = [n_weeks - step * k for k in reversed(range(origins)) if n_weeks - step * k - horizon >= min_context]
    if len(ends) < origins:
        logger.warning(
            "BACKTEST_ORIGINS=%d: only the last %d origin(s) leave MIN_CONTEXT_WEEKS=%d weeks before their test "
            "window; backtesting with those",
            origins,
            len(ends),
            min_context,
        )
    splits = [split_by_time(panel, end=e, horizon=horizon, min_context=min_context, stride=stride) for e in ends]
    last = splits[-1]
    left_out = panel.keys[panel.start + min_context > last.valid_start]
    if len(left_out):
        logger.warning(
            "%d series are too new for every split (need %d weeks before the validation window); they "
            "are forecast but left out of training/evaluation where too short: %s",
            len(left_out),
            min_context,
            left_out.head(10).to_dict("records"),
        )
    for split in splits:
        logger.info(
            "Origin %s: train windows %d (targets before %s), valid %d series, test %d series (%s..%s)",
            panel.dates[split.test_start].date(),
            len(split.train[0]),
            panel.dates[split.valid_start].date(),
            len(split.valid[0]),
            len(split.test[0]),
            panel.dates[split.test_start].date(),
            panel.dates[split.end - 1].date(),
        )
    return splits


def refit_windows(panel: Panel, *, min_context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Training windows of the final model: every week is a target (the last weeks' windows partly masked)."""
    return training_cuts(panel.start + min_context, last=len(panel.dates) - 1, stride=stride)


def gather_windows(
    scaled: np.ndarray | torch.Tensor,
    start: np.ndarray | torch.Tensor,
    series: np.ndarray | torch.Tensor,
    cuts: np.ndarray | torch.Tensor,
    *,
    context: int,
    horizon: int = 0,
    target_end: int | np.ndarray | torch.Tensor | None = None,
    drivers: np.ndarray | torch.Tensor | None = None,
    categories: np.ndarray | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Batch of model inputs: `context` weeks before each cut (zero-padded, masked before a series starts).

    With target_end (one week, or one per window), target weeks from target_end on are zeroed and masked
    (future_observed_mask). Drivers (series, weeks, drivers) follow the targets as further channels, their future
    weeks included: the forecast channel mixing reads them there. Categories become static_categorical_values.
    Arrays or tensors; the batch is made on scaled's device (a panel kept on the GPU is cut there).
    """
    scaled = torch.as_tensor(scaled)
    device = scaled.device
    start, series, cuts = (torch.as_tensor(a, device=device) for a in (start, series, cuts))
    t = cuts[:, None] + torch.arange(-context, horizon, device=device)
    end = scaled.shape[1] if target_end is None else torch.as_tensor(target_end, device=device).reshape(-1, 1)
    known = (t >= start[series, None]) & (t >= 0)  # the series has begun: drivers are known, future ones too
    observed = known & (t < end)
    values = scaled[series[:, None], t.clamp(0, scaled.shape[1] - 1)].float() * observed[..., None]
    mask = observed[..., None].repeat(1, 1, scaled.shape[2])
    if drivers is not None and drivers.shape[2]:
        drivers = torch.as_tensor(drivers, device=device)
        ahead = drivers[series[:, None], t.clamp(0, drivers.shape[1] - 1)].float() * known[..., None]
        values = torch.cat([values, ahead], dim=2)
        mask = torch.cat([mask, known[..., None].repeat(1, 1, drivers.shape[2])], dim=2)
    batch = {"past_values": values[:, :context].contiguous(), "past_observed_mask": mask[:, :context].contiguous()}
    if horizon:
        batch["future_values"] = values[:, context:].contiguous()
    if target_end is not None:
        batch["future_observed_mask"] = mask[:, context:].contiguous()
    if categories is not None:
        batch["static_categorical_values"] = torch.as_tensor(categories, device=device)[series]
    return batch


class WindowDataset(torch.utils.data.Dataset):
    """Forecast windows cut from one scaled array (no per-item pandas): what ForecastDFDataset yields, plus masks.

    On a GPU device the panel lives there and each batch is cut there: no DataLoader workers, no copy per batch.
    """

    def __init__(
        self,
        scaled: np.ndarray,
        start: np.ndarray,
        windows: tuple[np.ndarray, np.ndarray],
        *,
        context: int,
        horizon: int,
        freq_token: int | None,
        target_end: int | np.ndarray | None = None,
        drivers: np.ndarray | None = None,
        categories: np.ndarray | None = None,
        device: torch.device = torch.device("cpu"),
    ):
        """target_end: the week from which targets are masked, for every window or one per window (None: none)."""

        def tensor(array: np.ndarray | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
            return None if array is None else torch.as_tensor(array, dtype=dtype, device=device)

        self.scaled, self.drivers = tensor(scaled, torch.float32), tensor(drivers, torch.float32)
        self.start, self.series, self.cuts = tensor(start), tensor(windows[0]), tensor(windows[1])
        self.categories, self.device = tensor(categories), device
        self.target_end = target_end if target_end is None or np.ndim(target_end) == 0 else tensor(target_end)
        self.context, self.horizon, self.freq_token = context, horizon, freq_token

    def __len__(self) -> int:
        return len(self.series)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch in one vectorised gather; the DataLoader calls this instead of __getitem__ per window."""
        idx = torch.as_tensor(indices, device=self.device)
        batch = gather_windows(
            self.scaled,
            self.start,
            self.series[idx],
            self.cuts[idx],
            context=self.context,
            horizon=self.horizon,
            target_end=self.target_end[idx] if isinstance(self.target_end, torch.Tensor) else self.target_end,
            drivers=self.drivers,
            categories=self.categories,
        )
        if self.freq_token is not None:
            batch["freq_token"] = torch.full((len(idx),), self.freq_token, device=self.device)
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate_windows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataLoader collate for WindowDataset: __getitems__ already returns the whole batch."""
    return batch


# ---- 4. model -----------------------------------------------------------------------------------------------------


def check_hub(model_id: str) -> None:
    """Fail in about a second, not after ~40 s of download retries, when the Hugging Face Hub cannot be reached.

    A model already in the local hub cache still loads (after the retries, which the log announces).
    """
    import huggingface_hub
    import requests

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    try:
        huggingface_hub.model_info(model_id, timeout=5)
    except (requests.ConnectionError, requests.Timeout) as err:
        cached = Path(huggingface_hub.constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--")).is_dir()
        if not cached:
            raise InputError(
                f"PRETRAINED_MODEL={model_id}: the Hugging Face Hub cannot be reached ({type(err).__name__}) and the "
                "model is not in the local cache; work offline with a local folder: "
                "--PRETRAINED_MODEL=/path/to/ttm-90-30-ft-l1 (README: 'Uso offline')"
            ) from err
        logger.warning(
            "PRETRAINED_MODEL=%s: the Hub cannot be reached; loading the cached copy after the download retries "
            "(about 40 s). Set HF_HUB_OFFLINE=1 to skip them",
            model_id,
        )


def _driver_config(num_channels: int, num_drivers: int, category_sizes: Sequence[int]) -> dict:
    """TinyTimeMixerConfig overrides for known-future drivers (after the targets) and static categories: granite-tsfm's
    exogenous setup, forecast channel mixing over the drivers' future weeks (its mixer reads one week either side)."""
    extra = {}
    if num_drivers:
        extra = {
            "num_input_channels": num_channels + num_drivers,
            "prediction_channel_indices": list(range(num_channels)),
            "exogenous_channel_indices": list(range(num_channels, num_channels + num_drivers)),
            "enable_forecast_channel_mixing": True,
            "fcm_use_mixer": True,
            "fcm_context_length": 1,  # one week either side: 3 scored worse in the dunnhumby backtest (README)
            "fcm_prepend_past": True,
        }
    if category_sizes:
        extra |= {"decoder_mode": "mix_channel", "categorical_vocab_size_list": list(category_sizes)}
    return extra


def _targets_only(num_targets: int, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Backbone forward pre-hook: encode the target channels only (see decode_targets_only)."""
    mask = kwargs.get("past_observed_mask")
    kwargs["past_observed_mask"] = None if mask is None else mask[..., :num_targets]
    return (args[0][..., :num_targets], *args[1:]), kwargs


def decode_targets_only(model: torch.nn.Module) -> torch.nn.Module:
    """Run backbone and decoder on the target channels only, when they are channel-independent (common_channel).

    With drivers, granite-tsfm encodes and decodes every input channel and then keeps the targets; the drivers
    reach the forecast through the forecast channel mixing only, which reads past and future values itself. The
    output is identical (a test checks it) and a run with 5 drivers costs about what one without does.
    """
    cfg = model.config
    hooked = bool(model.backbone._forward_pre_hooks)
    if cfg.prediction_channel_indices and cfg.decoder_mode == "common_channel" and not hooked:
        model.backbone.register_forward_pre_hook(
            functools.partial(_targets_only, len(cfg.prediction_channel_indices)), with_kwargs=True
        )
    return model


class ShortAxisSoftmax(torch.nn.Module):
    """torch.nn.Softmax(dim=-1), its twin, which TTM's gated attention applies; on CPU, when the last axis is the
    shorter of the last two, computed along the transposed axis: same values, 5x faster there. torch 2.13's CPU
    kernel vectorises along the softmax axis, and the patch mixer's axis holds 11 patches, so it took 42% of a
    forward on 2 cores (bare forward 1,280-1,340 -> 1,940-2,230 series/s, bare train step +7%; the bare forward
    with torch.nn.Softmax is in tests/benchmarks/bench_predict.py)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_cpu and inputs.dim() > 1 and inputs.shape[-1] < inputs.shape[-2]:
            return torch.softmax(inputs.transpose(-1, -2), dim=-2).transpose(-1, -2)
        return torch.softmax(inputs, dim=-1)


def ready_to_run(model: torch.nn.Module) -> torch.nn.Module:
    """A loaded TTM as the pipeline runs it (build_model, load_artifacts): decode_targets_only, and ShortAxisSoftmax
    in every gated attention. Neither has weights: saved models stay plain granite-tsfm ones."""
    for module in model.modules():
        if isinstance(module, TinyTimeMixerGatedAttention):
            module.attn_softmax = ShortAxisSoftmax()
    return decode_targets_only(model)


def _start_at_pretrained(model: torch.nn.Module) -> None:
    """Zero the output layers of the blocks added for drivers and categories, so that training starts from the
    pretrained forecast (random ones shift it: WAPE 0.4-1.1 at load in the probe)."""
    for name, module in model.named_modules():
        mixer_out = name.startswith("decoder") and name.endswith("channel_feature_mixer.mlp.fc2")
        if name == "head.fcm_block.mlp" or mixer_out:
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


class _NewBlocksNote(logging.Filter):
    """Drops transformers' list of newly initialised weights (~50 names) when drivers or categories add blocks on
    purpose; build_model logs them in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Some weights of")


def model_shape(settings: dict, panel: Panel) -> dict:
    """build_model's arguments besides the model: lengths and loss from settings, channels from the panel."""
    return {
        "context_length": settings["CONTEXT_LENGTH"],
        "prediction_length": settings["PREDICTION_LENGTH"],
        "prefer_l1": settings["PREFER_L1_LOSS"],
        "num_channels": len(panel.targets),
        "num_drivers": len(panel.driver_names),
        "category_sizes": [panel.keys[c].nunique() + 1 for c in panel.categorical],  # + the code of unseen values
    }


def build_model(
    model_path: str,
    *,
    context_length: int,
    prediction_length: int,
    prefer_l1: bool,
    num_channels: int,
    num_drivers: int = 0,
    category_sizes: Sequence[int] = (),
) -> torch.nn.Module:
    """Load the pretrained TTM variant for context/horizon (hub id or local folder) with get_model; with drivers or
    categories, its new blocks start at the pretrained forecast."""
    local = Path(model_path).expanduser()
    if not local.exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") != 1):
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: folder not found; give a folder with config.json and "
            "model.safetensors, or a hub id such as ibm-granite/granite-timeseries-ttm-r2"
        )
    if not local.exists():
        check_hub(model_path)
    new_blocks = _NewBlocksNote() if num_drivers or category_sizes else None
    try:
        if new_blocks:
            logging.getLogger("transformers.modeling_utils").addFilter(new_blocks)
        model = get_model(
            str(local) if local.exists() else model_path,
            context_length=context_length,
            prediction_length=prediction_length,
            freq="W",
            freq_prefix_tuning=True,
            prefer_l1_loss=prefer_l1,
            **{"num_input_channels": num_channels} | _driver_config(num_channels, num_drivers, category_sizes),
        )
    except OSError as err:
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: could not load it ({str(err).splitlines()[0]}). Offline? "
            "Download the model once, or point to a local folder: "
            "--PRETRAINED_MODEL=/path/to/ttm-90-30-ft-l1"
        ) from err
    finally:
        if new_blocks:
            logging.getLogger("transformers.modeling_utils").removeFilter(new_blocks)
    if model.config.context_length > context_length:
        raise InputError(
            f"PRETRAINED_MODEL={model_path} reads {model.config.context_length} weeks, more than "
            f"CONTEXT_LENGTH={context_length}; raise CONTEXT_LENGTH or pick a shorter model"
        )
    logger.info(
        "Model %s: context %d, horizon %d (of %d), loss %s; reads the last %d of CONTEXT_LENGTH=%d weeks",
        model_path,
        model.config.context_length,
        prediction_length,
        model.config.prediction_length,
        model.config.loss,
        model.config.context_length,
        context_length,
    )
    if new_blocks:
        added = sum(
            p.numel()
            for n, p in model.named_parameters()
            if any(fnmatch.fnmatchcase(n, f"*{b}*") for b in DRIVER_BLOCKS)
        )
        logger.info(
            "Blocks added for %d drivers and %d categories: %d parameters, starting at zero output",
            num_drivers,
            len(category_sizes),
            added,
        )
    _start_at_pretrained(model)
    return ready_to_run(model)


def freq_token_for(model: torch.nn.Module) -> int | None:
    """granite-tsfm's weekly frequency token, for models pretrained with one (r2.1); None otherwise."""
    return DEFAULT_FREQUENCY_MAPPING["W"] if model.config.resolution_prefix_tuning else None


def unfreeze_only(model: torch.nn.Module, name_parts: Sequence[str]) -> float:
    """Freeze all parameters except those whose name contains one of name_parts (globs such as "decoder*fc1" too).

    Returns the trainable fraction.
    """
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad = any(fnmatch.fnmatchcase(name, f"*{part}*") for part in name_parts)
    trainable = count_parameters(model)
    if not trainable:
        raise InputError(
            f"TRAINABLE_LAYERS={list(name_parts)} matched no parameter; names look like {list(params)[:3]}"
        )
    total = sum(p.numel() for p in params.values())
    logger.info(
        "Trainable parameters: %d of %d (%.1f%%) in layers matching %s",
        trainable,
        total,
        100 * trainable / total,
        ", ".join(name_parts),
    )
    return trainable / total


# ---- 5. train -----------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes training together (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the process that writes results and the model: rank 0 under torchrun, the only one otherwise."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process under torchrun; nothing otherwise."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def init_distributed(use_cpu: bool) -> None:
    """Under torchrun, join the process group (NCCL with GPUs, gloo on CPUs), one GPU per local rank; the HF Trainer
    then trains with DistributedDataParallel, each rank on its share of every epoch's windows."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available() and not use_cpu
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        logger.info(
            "Distributed: rank %d of %d (%s)", torch.distributed.get_rank(), world_size(), "nccl" if cuda else "gloo"
        )


def steps_per_epoch(n_windows: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch, as OneCycleLR must know them."""
    return math.ceil(n_windows / (batch_size * grad_accum))


@dataclass(frozen=True)
class TrainSettings:
    """Sections 3 and 5 of config.py, as each training of the run is given them."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    patience: int
    seed: int
    workers: int
    use_cpu: bool
    windows_per_epoch: int  # drawn at random each epoch from all training windows (0: all of them)
    valid_windows: int  # validation windows scored each epoch, a fixed sample (0: all of them)
    min_context: int
    stride: int
    horizon: int
    gather_on_gpu: bool = True  # on a GPU, the panel lives there and windows are cut on it

    @classmethod
    def from_config(cls, cfg: SimpleNamespace) -> "TrainSettings":
        return cls(
            cfg.LEARNING_RATE,
            cfg.WEIGHT_DECAY,
            cfg.NUM_TRAIN_EPOCHS,
            cfg.BATCH_SIZE,
            cfg.EARLY_STOPPING_PATIENCE,
            cfg.SEED,
            cfg.NUM_WORKERS,
            cfg.USE_CPU,
            cfg.MAX_TRAIN_WINDOWS,
            cfg.MAX_VALID_WINDOWS,
            cfg.MIN_CONTEXT_WEEKS,
            cfg.TRAIN_STRIDE,
            cfg.PREDICTION_LENGTH,
            cfg.GATHER_ON_GPU,
        )


class WindowTrainer(Trainer):
    """HF Trainer whose epoch is `windows_per_epoch` training windows drawn at random (without replacement) from
    all of them, so that every week of the year starts windows however many series there are."""

    def __init__(self, *args, windows_per_epoch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.windows_per_epoch = windows_per_epoch

    def _get_train_sampler(self, train_dataset: torch.utils.data.Dataset | None = None) -> torch.utils.data.Sampler:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return torch.utils.data.RandomSampler(dataset, num_samples=min(len(dataset), self.windows_per_epoch))


class BestCheckpointOnEveryRank(TrainerCallback):
    """Under torchrun, every rank names the best checkpoint once rank 0 has written it.

    transformers 4.56's `Trainer._save_checkpoint` records the best checkpoint only if its folder already exists,
    and only rank 0 writes it: a rank that looks first keeps None, skips the barrier before loading the best model
    at the end of training, and rank 0 waits there forever (transformers PR #40923, released in 4.57, which
    granite-tsfm 0.3.2 does not accept). This repeats that check after a barrier, in the `on_save` that follows."""

    def on_save(self, args, state, control, **kwargs):
        if world_size() > 1 and state.best_global_step:
            barrier()
            best = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
            if os.path.isdir(best):
                state.best_model_checkpoint = best


def window_device(settings: TrainSettings) -> torch.device:
    """Where training windows are cut: on the GPU this process trains on (GATHER_ON_GPU), else on the CPU."""
    if settings.gather_on_gpu and torch.cuda.is_available() and not settings.use_cpu:
        return torch.device("cuda", torch.cuda.current_device())  # under torchrun the local rank's (init_distributed)
    return torch.device("cpu")


def window_datasets(
    data: ScaledPanel,
    windows: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    model: torch.nn.Module,
    horizon: int,
    train_end: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> dict[str, WindowDataset]:
    """One WindowDataset per named set of window cuts, shaped for the model (its context and frequency token), its
    arrays on device; the "train" set's targets from week train_end on are masked."""
    return {
        name: WindowDataset(
            data.values,
            data.panel.start,
            cuts,
            context=model.config.context_length,
            horizon=horizon,
            freq_token=freq_token_for(model),
            target_end=train_end if name == "train" else None,
            drivers=data.drivers,
            categories=data.categories,
            device=device,
        )
        for name, cuts in windows.items()
    }


def wape_metric(data: ScaledPanel, windows: tuple[np.ndarray, np.ndarray], horizon: int) -> Callable:
    """Trainer compute_metrics: WAPE in original units (forecasts clipped at 0) of the windows, mean over targets:
    the volume-weighted error users judge, for early stopping and the best checkpoint."""
    series, cuts = windows
    y = data.panel.values[series[:, None], cuts[:, None] + np.arange(horizon)]

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        forecast = data.scaling.invert(prediction.predictions[:, :horizon], series)
        return {"wape": float(np.mean(np.abs(forecast - y).sum((0, 1)) / np.abs(y).sum((0, 1))))}

    return compute


def make_trainer(
    model: torch.nn.Module,
    datasets: dict[str, WindowDataset],
    *,
    out_dir: Path,
    settings: TrainSettings,
    metric: Callable | None,
    epochs: int | None = None,
) -> Trainer:
    """HF Trainer on datasets "train" (and "valid" with metric: early stopping and best checkpoint on its WAPE):
    AdamW over trainable parameters, OneCycleLR over settings.epochs, TensorBoard logs. `epochs` stops sooner."""
    lr, batch_size, use_cpu, train = settings.lr, settings.batch_size, settings.use_cpu, datasets["train"]
    on_gpu = train.device.type == "cuda"  # windows cut there: no workers, nothing to pin
    if on_gpu and settings.workers:
        logger.info("Windows cut on the GPU: NUM_WORKERS=%d unused (GATHER_ON_GPU=False uses it)", settings.workers)
    steps = steps_per_epoch(min(len(train), settings.windows_per_epoch or len(train)), batch_size * world_size())
    evaluate = "epoch" if metric else "no"
    args = TrainingArguments(
        output_dir=str(out_dir),
        run_name=out_dir.name,
        logging_dir=str(out_dir.parent / "logs" / out_dir.name),
        report_to=["tensorboard"],
        eval_strategy=evaluate,
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=max(1, steps // 4),
        load_best_model_at_end=metric is not None,
        metric_for_best_model="wape" if metric else None,
        greater_is_better=False,
        save_total_limit=2,
        num_train_epochs=epochs or settings.epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4 * batch_size,
        learning_rate=lr,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0 if on_gpu else settings.workers,
        use_cpu=use_cpu or not torch.cuda.is_available(),  # so that torchrun on CPUs trains with DDP over gloo
        label_names=["future_values"],
        remove_unused_columns=False,  # batches come whole from WindowDataset.__getitems__
        save_safetensors=True,
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_pin_memory=torch.cuda.is_available() and not use_cpu and not on_gpu,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=settings.epochs, steps_per_epoch=steps
    )
    return WindowTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=datasets.get("valid"),
        optimizers=(optimizer, scheduler),
        data_collator=collate_windows,
        compute_metrics=metric,
        preprocess_logits_for_metrics=lambda outputs, labels: outputs[0],  # the forecast, not the hidden states
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.patience), BestCheckpointOnEveryRank()]
        if metric
        else [],
        windows_per_epoch=settings.windows_per_epoch or len(train),
    )


def resume_checkpoint(out_dir: Path, fingerprint: str, fresh: bool) -> str | None:
    """Last checkpoint of an interrupted training with the same settings and data, else None (stale ones removed)."""
    stamp = out_dir / "run_fingerprint.txt"
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    same = stamp.is_file() and stamp.read_text() == fingerprint
    barrier()  # under torchrun every rank decides on the same files before rank 0 changes them
    if last and same and not fresh:
        logger.info("Resuming the interrupted run from %s (use --FRESH_START=True to start over)", last)
        return last
    if not is_main_process():
        barrier()
        return None
    for old in out_dir.glob("checkpoint-*"):
        shutil.rmtree(old)
    if last:
        logger.info(
            "Starting fresh: %s",
            "FRESH_START=True"
            if fresh
            else "settings or data changed since the checkpoints in %s were written" % out_dir,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    barrier()
    return None


def run_fingerprint(settings: dict, panel: Panel) -> str:
    """sha256 of the settings that shape training and of the panel: a checkpoint resumes only the same run."""
    digest = hashlib.sha256(
        json.dumps(
            {k: v for k, v in settings.items() if k not in ("MODE", "LOG_LEVEL", "DEBUG", "FRESH_START")},
            sort_keys=True,
            default=str,
        ).encode()
    )
    digest.update(panel.values.tobytes())
    digest.update(panel.drivers.tobytes())
    digest.update(pd.util.hash_pandas_object(panel.keys, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fine_tune(trainer: Trainer, *, checkpoint: str | None) -> dict:
    """Train with early stopping on validation WAPE; return the training figures, with best_epoch 0 when no epoch
    beat the pretrained weights."""
    pretrained = trainer.evaluate()["eval_wape"]
    out = trainer.train(resume_from_checkpoint=checkpoint)
    state, runtime = trainer.state, out.metrics["train_runtime"]
    best_epoch = 0
    if state.best_global_step and state.best_metric < pretrained:  # a diverged run (NaN) never counts as better
        best_epoch = round(state.best_global_step / len(trainer.get_train_dataloader()))
    else:
        logger.warning(
            "Fine-tuning did not beat the pretrained model on validation (best WAPE %.4f vs %.4f); keeping the "
            "pretrained weights for this origin",
            state.best_metric,
            pretrained,
        )
    logger.info(
        "Trained %.0f epochs in %.0f s; validation WAPE pretrained %.4f, best %.4f (epoch %d)",
        state.epoch,
        runtime,
        pretrained,
        state.best_metric,
        best_epoch,
    )
    windows = min(len(trainer.train_dataset), trainer.windows_per_epoch)
    return {
        "epochs": state.epoch,
        "best_epoch": best_epoch,
        "valid_wape_pretrained": pretrained,
        "valid_wape_best": state.best_metric,
        "train_runtime_s": runtime,
        "train_windows_per_s": windows * state.epoch / runtime,
    }


# ---- 6. backtest: every origin trained and scored as the final model will be ------------------------------------


@torch.no_grad()
def forecast_scaled(
    model: torch.nn.Module,
    scaled: np.ndarray,
    start: np.ndarray,
    windows: tuple[np.ndarray, np.ndarray],
    *,
    horizon: int,
    batch_size: int | None = None,
    drivers: np.ndarray | None = None,
    categories: np.ndarray | None = None,
) -> np.ndarray:
    """Point forecasts, shape (windows, horizon, targets), in scaled units. With drivers, the windows' future weeks
    carry them (targets zeroed), as the forecast channel mixing reads them.

    batch_size None: 512 windows on CPU (median of 3 on 2 cores: 1,940 series/s against 1,580 at 256 and 1,710 at
    1,024), 4,096 on GPU.
    """
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or (512 if device.type == "cpu" else 4096)
    ahead = horizon if drivers is not None and drivers.shape[2] else 0
    data = WindowDataset(
        scaled,
        start,
        windows,
        context=model.config.context_length,
        horizon=ahead,
        freq_token=freq_token_for(model),
        target_end=windows[1] if ahead else None,
        drivers=drivers,
        categories=categories,
        device=device,
    )
    out = [np.zeros((0, horizon, scaled.shape[2]), np.float32)]
    for i in range(0, len(data), batch_size):
        batch = data.__getitems__(range(i, min(i + batch_size, len(data))))
        batch.pop("future_observed_mask", None)
        out.append(model(**batch, return_loss=False).prediction_outputs[:, :horizon].float().cpu().numpy())
    return np.concatenate(out)


def method_forecasts(
    models: dict[str, torch.nn.Module], data: ScaledPanel, windows: tuple[np.ndarray, np.ndarray], *, horizon: int
) -> dict[str, np.ndarray]:
    """The baselines and each model's forecast of the windows, in original units (backtest origins and the future)."""
    forecasts = baseline_forecasts(data.panel.values, data.panel.start, windows, horizon)
    for name, model in models.items():
        scaled = forecast_scaled(
            model,
            data.values,
            data.panel.start,
            windows,
            horizon=horizon,
            drivers=data.drivers,
            categories=data.categories,
        )
        forecasts[name] = data.scaling.invert(scaled, windows[0])
    return forecasts


def panel_until(panel: Panel, end: int) -> Panel:
    """The panel as it was before week `end`: what a backtest origin may read (drivers are known ahead, so their
    later weeks stay: a window's future weeks read them)."""
    return dataclasses.replace(panel, dates=panel.dates[:end], values=panel.values[:, :end])  # drivers: all weeks


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


def sample_windows(windows: tuple[np.ndarray, np.ndarray], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most n of the windows, the same random ones every epoch (n 0: all): bounds the validation cost per epoch on
    big panels (50,000 series: 50,000 windows scored per epoch against 1,500 trained) without changing small ones."""
    if not n or len(windows[0]) <= n:
        return windows
    keep = np.sort(np.random.default_rng(seed).choice(len(windows[0]), n, replace=False))
    logger.info(
        "Validation: a fixed random sample of %d of the %d series' windows (MAX_VALID_WINDOWS)", n, len(windows[0])
    )
    return windows[0][keep], windows[1][keep]


def backtest_origin(
    panel: Panel,
    split: Split,
    *,
    pretrained: torch.nn.Module,
    zero_shot: torch.nn.Module,
    settings: TrainSettings,
    out_dir: Path,
    resume: tuple[str, bool],
) -> OriginResult:
    """One origin, done as the final model is: choose the epochs by early stopping on the validation window (scaled
    on the training weeks), refit on every week before the test window for those epochs, and forecast the test
    window with every method. Nothing from week split.end on is read. resume: (fingerprint, FRESH_START)."""
    seen, horizon = panel_until(panel, split.end), split.end - split.test_start
    training = {"epochs": 0, "best_epoch": 0, "train_windows": len(split.train[0])}
    logger.info("Backtest origin %s", seen.dates[split.test_start].date())
    if len(split.train[0]) and len(split.valid[0]):
        fit_end = split.fit_end
        data = scale_panel(seen, fit_group_scaler(seen, fit_end=fit_end), fit_driver_scaling(seen, fit_end=fit_end))
        model = copy.deepcopy(pretrained)
        windows = {"train": split.train, "valid": sample_windows(split.valid, settings.valid_windows, settings.seed)}
        datasets = window_datasets(
            data, windows, model=model, horizon=horizon, train_end=split.valid_start, device=window_device(settings)
        )
        metric = wape_metric(data, windows["valid"], horizon)
        trainer = make_trainer(model, datasets, out_dir=out_dir, settings=settings, metric=metric)
        training |= fine_tune(trainer, checkpoint=resume_checkpoint(out_dir, *resume))
    else:
        logger.warning("No training or validation windows before this origin: fine-tuned = pretrained here")
    history = panel_until(panel, split.test_start)
    model, _, _, known = refit(
        history,
        pretrained=pretrained,
        epochs=training["best_epoch"],
        settings=settings,
        out_dir=out_dir / "refit",
        resume=resume,
    )
    series = split.test[0]
    forecasts = method_forecasts({"fine_tuned": model, "zero_shot": zero_shot}, known, split.test, horizon=horizon)
    return OriginResult(
        str(seen.dates[split.test_start].date()),
        seen.keys.iloc[series].reset_index(drop=True),
        seen.values[series[:, None], split.test_start + np.arange(horizon)],
        forecasts,
        known.scaling.scale[series],
        mase_scale(seen.values, seen.start, split.test_start)[series],
        training,
    )


def run_backtest(
    panel: Panel,
    splits: Sequence[Split],
    *,
    pretrained: torch.nn.Module,
    zero_shot: torch.nn.Module,
    settings: TrainSettings,
    results: Path,
    resume: tuple[str, bool],
) -> list[OriginResult]:
    """Every origin of the backtest, in order (checkpoints under results/origin-N/)."""
    return [
        backtest_origin(
            panel,
            split,
            pretrained=pretrained,
            zero_shot=zero_shot,
            settings=settings,
            out_dir=results / f"origin-{number}",
            resume=resume,
        )
        for number, split in enumerate(splits, start=1)
    ]


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


def refit(
    panel: Panel,
    *,
    pretrained: torch.nn.Module,
    epochs: int,
    settings: TrainSettings,
    out_dir: Path,
    resume: tuple[str, bool],
) -> tuple[torch.nn.Module, TimeSeriesPreprocessor, DriverScaling, ScaledPanel]:
    """The model that forecasts the future: scaled and trained on every week for the epochs the backtest chose.

    Returns the model (the pretrained one with epochs 0), the fitted preprocessor and driver scaling, and the
    scaled panel.
    """
    fit_end = np.full(len(panel.keys), len(panel.dates))
    tsp, drivers = fit_group_scaler(panel, fit_end=fit_end), fit_driver_scaling(panel, fit_end=fit_end)
    data, model = scale_panel(panel, tsp, drivers), copy.deepcopy(pretrained)
    windows = refit_windows(panel, min_context=settings.min_context, stride=settings.stride)
    if epochs and len(windows[0]):
        logger.info(
            "Refit on the %d weeks up to %s: %d windows, %d epochs",
            len(panel.dates),
            panel.dates[-1].date(),
            len(windows[0]),
            epochs,
        )
        horizon, end = settings.horizon, len(panel.dates)
        datasets = window_datasets(
            data, {"train": windows}, model=model, horizon=horizon, train_end=end, device=window_device(settings)
        )
        trainer = make_trainer(model, datasets, out_dir=out_dir, settings=settings, metric=None, epochs=epochs)
        trainer.train(resume_from_checkpoint=resume_checkpoint(out_dir, *resume))
        model = trainer.model
    return model, tsp, drivers, data


def fit_intervals(y_true: np.ndarray, y_pred: np.ndarray, level: float) -> PostHocProbabilisticProcessor | None:
    """Split-conformal intervals on forecast errors in the series' own scale, or None with too few windows."""
    alpha = 1 - level
    if len(y_true) < math.ceil(1 / alpha):
        logger.warning(
            "Only %d backtest windows: too few for %.0f%% conformal intervals; none written", len(y_true), 100 * level
        )
        return None
    conformal = PostHocProbabilisticProcessor(
        quantiles=[alpha / 2, 1 - alpha / 2], method="conformal", nonconformity_score="absolute_error"
    )
    return conformal.train(y_true.astype(np.float64), y_pred.astype(np.float64))


def interval_bounds(
    conformal: PostHocProbabilisticProcessor, point: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds around point forecasts (original units), errors measured in each series' scale."""
    bounds = conformal.predict(point / scale[:, None]) * scale[:, None, :, None]
    return np.clip(bounds[..., 0], 0, None), np.clip(bounds[..., 1], 0, None)


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
    origins: Sequence[OriginResult], *, panel: Panel, forced: str, level: float, date_column: str
) -> Choice:
    """Score every method at every origin, pick one per target and calibrate the intervals on its errors."""
    per_series, figures, selection = score_backtest(origins, targets=panel.targets, forced=forced)
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


def selected_forecast(forecasts: dict[str, np.ndarray], selection: dict[str, str]) -> np.ndarray:
    """The forecast of each target by its selected method (a single method or a blend such as a+b)."""
    return np.stack([blend(forecasts, method)[..., c] for c, method in enumerate(selection.values())], axis=-1)


def score_backtest(
    origins: Sequence[OriginResult], *, targets: tuple, forced: str
) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """Every method and blend scored at every origin (original units), the mean over origins, and per target the
    method with the lowest mean WAPE (or `forced`, when not "auto").

    Returns the per-series metrics, the figures for metricas.json and the selection {target: method}.
    """
    rows, per_origin = [], []
    for origin in origins:
        forecasts = with_blends(origin.forecasts)
        per_series, overall = evaluate_methods(
            origin.y, forecasts, scale=origin.mase_scale, keys=origin.keys, targets=targets
        )
        rows.append(per_series.assign(origin=origin.start))
        per_origin.append(overall)
    mean, spread = mean_over_origins(per_origin)
    chosen = select_methods(mean, CANDIDATES)
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


# ---- 7. forecast --------------------------------------------------------------------------------------------------


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
    models: dict[str, torch.nn.Module],
    data: ScaledPanel,
    conformal: PostHocProbabilisticProcessor | None,
    selection: dict[str, str],
    *,
    horizon: int,
    date_column: str,
) -> pd.DataFrame:
    """previsoes.csv rows: every series forecast from its last week by each target's selected method (point and
    bounds, original units); series the scaler did not know are flagged new_series."""
    panel = data.panel
    windows = (np.arange(len(panel.keys)), np.full(len(panel.keys), len(panel.dates)))
    needed = {part for method in selection.values() for part in method.split("+")}
    forecasts = method_forecasts({n: m for n, m in models.items() if n in needed}, data, windows, horizon=horizon)
    point = selected_forecast(forecasts, selection)
    bounds = None if conformal is None else interval_bounds(conformal, point, data.scaling.scale)
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


# ---- 8. save ------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifacts(
    models: dict[str, torch.nn.Module],
    scalers: tuple[TimeSeriesPreprocessor, DriverScaling],
    conformal: PostHocProbabilisticProcessor | None,
    settings: dict,
    final_dir: Path,
) -> None:
    """Write the models ("fine_tuned" at the top, "zero_shot" in zero_shot/), preprocessor.pkl, drivers.pkl,
    conformal.pkl and settings beside final_dir, then swap it in atomically."""
    staging, backup = final_dir.with_name(final_dir.name + ".tmp"), final_dir.with_name(final_dir.name + ".bak")
    shutil.rmtree(staging, ignore_errors=True)
    models["fine_tuned"].save_pretrained(staging)
    models["zero_shot"].save_pretrained(staging / "zero_shot")
    # Plain pickle: preprocessor.pkl loads 10x faster than with joblib, and conformal.pkl in 1 ms against 50 ms for
    # PostHocProbabilisticProcessor.from_pretrained (which formats the whole 1.2 MB config for a log line).
    for name, scaler in zip(("preprocessor.pkl", "drivers.pkl"), scalers):
        with open(staging / name, "wb") as f:
            pickle.dump(scaler, f, protocol=pickle.HIGHEST_PROTOCOL)
    SeriesScalers.of(scalers[0]).save(staging / "scalers.npz")
    if conformal is not None:
        with open(staging / "conformal.pkl", "wb") as f:
            pickle.dump(conformal, f, protocol=pickle.HIGHEST_PROTOCOL)
    (staging / "settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    manifest = {
        "tool": "ttm_model",
        "versions": {p: version(p) for p in PACKAGES},
        "sha256": {f.relative_to(staging).as_posix(): _sha256(f) for f in sorted(staging.rglob("*")) if f.is_file()},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if final_dir.exists():
        shutil.rmtree(backup, ignore_errors=True)
        final_dir.rename(backup)  # kept until the new folder is in place
    staging.rename(final_dir)
    shutil.rmtree(backup, ignore_errors=True)
    logger.info("Saved %s and manifest.json to %s/", ", ".join(manifest["sha256"]), final_dir)


def _checked_manifest(final_dir: Path) -> dict:
    """manifest.json of final_dir, after checking that every file it lists is there unchanged."""
    manifest_file = final_dir / "manifest.json"
    if not manifest_file.is_file():
        raise InputError(
            f"{final_dir}: no manifest.json, so not a folder written by ttm_model.py; train first "
            "(python ttm_model.py) or set --FINAL_MODEL_DIR"
        )
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    for name, digest in manifest.get("sha256", {}).items():
        file = final_dir / name
        if not file.is_file() or _sha256(file) != digest:
            raise InputError(
                f"{file}: missing or changed since ttm_model.py wrote it (sha256 mismatch); refusing to "
                "load it. Retrain, or restore the folder from a backup"
            )
    for name in ("preprocessor.pkl", "drivers.pkl"):
        if name not in manifest.get("sha256", {}):
            raise InputError(f"{final_dir}/manifest.json does not list {name}; refusing to unpickle it (retrain)")
    for package, wrote in manifest.get("versions", {}).items():
        if version(package) != wrote:
            logger.warning("%s: written with %s %s, running %s", final_dir, package, wrote, version(package))
    return manifest


def load_artifacts(
    final_dir: Path, *, method: str = "auto"
) -> tuple[
    dict[str, torch.nn.Module],
    tuple[SeriesScalers, DriverScaling],
    PostHocProbabilisticProcessor | None,
    dict,
]:
    """Load what save_artifacts wrote, after checking every file against manifest.json (no foreign pickles).

    Returns the models that the forecast method needs (the saved selection, or `method` for every target), the
    scalers (series scalers and driver scaling), the intervals and the settings with "SELECTION" set to what will be
    used.
    """
    manifest = _checked_manifest(final_dir)
    from tsfm_public import TinyTimeMixerForPrediction

    settings = json.loads((final_dir / "settings.json").read_text(encoding="utf-8"))
    if "SELECTION" not in settings:
        raise InputError(
            f"{final_dir}: written by an older version (no method selection); retrain: python ttm_model.py"
        )
    if method != "auto":
        settings["SELECTION"] = dict.fromkeys(settings["SELECTION"], method)
    needed = {part for chosen in settings["SELECTION"].values() for part in chosen.split("+")}
    folders = {"fine_tuned": final_dir, "zero_shot": final_dir / "zero_shot"}
    models = {
        name: ready_to_run(TinyTimeMixerForPrediction.from_pretrained(folders[name])) for name in needed & set(folders)
    }
    if (final_dir / "scalers.npz").exists():
        scalers = [SeriesScalers.load(final_dir / "scalers.npz")]
    else:  # a folder of an earlier version
        with open(final_dir / "preprocessor.pkl", "rb") as f:
            scalers = [SeriesScalers.of(pickle.load(f))]
    with open(final_dir / "drivers.pkl", "rb") as f:
        scalers.append(pickle.load(f))
    conformal = None
    if "conformal.pkl" in manifest["sha256"]:
        with open(final_dir / "conformal.pkl", "rb") as f:
            conformal = pickle.load(f)
    else:
        logger.warning(
            "%s: no conformal.pkl (the backtest had too few windows); previsoes.csv gets no interval bounds",
            final_dir,
        )
    return models, tuple(scalers), conformal, settings


# ---- the run ------------------------------------------------------------------------------------------------------


class PhaseClock:
    """Wall time of the run's phases (seconds), for the log and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.seconds[phase], self._last = self.seconds.get(phase, 0.0) + now - self._last, now
        return self.seconds[phase]

    def __str__(self) -> str:
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
        return f"{sum(self.seconds.values()):.1f} s ({phases})"


def check_output_dirs(dirs: Sequence[Path], min_free_mb: int) -> None:
    """Fail before any work if an output folder is not writable or its disk is nearly full."""
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write_test_{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            raise InputError(
                f"{folder}: cannot write there ({err.strerror}); fix its permissions or set "
                "RESULTS_DIR/FINAL_MODEL_DIR to another folder"
            ) from err
        free_mb = shutil.disk_usage(folder).free / 2**20
        if free_mb < min_free_mb:
            raise InputError(f"{folder}: only {free_mb:.0f} MB free, MIN_FREE_DISK_MB={min_free_mb}; free some space")


def write_outputs(
    forecast: pd.DataFrame,
    choice: Choice,
    panel: Panel,
    models: dict[str, torch.nn.Module],
    scalers: tuple[TimeSeriesPreprocessor, DriverScaling],
    *,
    saved: dict,
    metrics: dict,
    clock: PhaseClock,
) -> None:
    """Section 8: previsoes.csv, plots, final_ttm_model/ (settings as saved) and the metrics, under RESULTS_DIR."""
    results, date_column = Path(saved["RESULTS_DIR"]), saved["DATE_COLUMN"]
    write_forecasts(forecast, results / "previsoes.csv", date_column=date_column)
    level, top_n = saved["INTERVAL_LEVEL"], saved["PLOT_TOP_SERIES"]
    plot_results(
        panel, forecast, choice.last_origin, choice.figures["metrics"], results / "plots", top_n=top_n, level=level
    )
    clock.lap("plots")
    save_artifacts(models, scalers, choice.conformal, saved, Path(saved["FINAL_MODEL_DIR"]))
    clock.lap("save")
    write_metrics(metrics, choice.per_series, results)


def run_train(cfg: SimpleNamespace) -> dict:
    """The training run, one named call per section; returns the metrics also written to metricas.json."""
    results, final_dir, clock = Path(cfg.RESULTS_DIR), Path(cfg.FINAL_MODEL_DIR), PhaseClock()
    check_output_dirs([results, final_dir.resolve().parent], cfg.MIN_FREE_DISK_MB)
    columns, horizon = _columns(vars(cfg)), cfg.PREDICTION_LENGTH
    synthetic_dir = results if cfg.DATA_PATH == config.DATA_PATH else None  # only the default path may be absent
    sales, ahead = load_sales(  # 1
        cfg.DATA_PATH,
        columns=columns,
        future_path=cfg.FUTURE_PATH,
        horizon=horizon,
        seed=cfg.SEED,
        synthetic_dir=synthetic_dir,
    )
    clock.lap("load")
    panel, anchor = weekly_panel(sales, ahead, settings=vars(cfg), source=cfg.DATA_PATH)  # 2
    settings = TrainSettings.from_config(cfg)
    splits = backtest_splits(panel, origins=cfg.BACKTEST_ORIGINS, step=cfg.BACKTEST_STEP, settings=settings)  # 3
    clock.lap("preprocess")
    pretrained = build_model(cfg.PRETRAINED_MODEL, **model_shape(vars(cfg), panel))  # 4
    zero_shot = copy.deepcopy(pretrained)  # the same pretrained weights, kept untouched for the comparison
    trainable = unfreeze_only(pretrained, (*cfg.TRAINABLE_LAYERS, *DRIVER_BLOCKS))
    resume = (run_fingerprint(vars(cfg), panel), cfg.FRESH_START)
    clock.lap("model")
    origins = run_backtest(  # 5: per origin, early stopping on validation WAPE, then a refit up to the origin
        panel, splits, pretrained=pretrained, zero_shot=zero_shot, settings=settings, results=results, resume=resume
    )
    clock.lap("backtest")
    choice = choose_methods(  # 6
        origins, panel=panel, forced=cfg.FORECAST_METHOD, level=cfg.INTERVAL_LEVEL, date_column=cfg.DATE_COLUMN
    )
    epochs = refit_epochs(origins) if "fine_tuned" in "+".join(choice.selection.values()) else 0
    model, tsp, drivers, data = refit(  # 7: the final model on every week, then the forecast
        panel, pretrained=pretrained, epochs=epochs, settings=settings, out_dir=results / "refit", resume=resume
    )
    clock.lap("refit")
    models = {"fine_tuned": model, "zero_shot": zero_shot}
    forecast = forecast_future(
        models, data, choice.conformal, choice.selection, horizon=horizon, date_column=cfg.DATE_COLUMN
    )
    forecast_rate = len(panel.keys) / clock.lap("forecast")
    saved = {**vars(cfg), "WEEK_ANCHOR": anchor, "CONTROL_COLUMNS": _controls(panel), "SELECTION": choice.selection}
    metrics = {"trainable_fraction": trainable, "n_series": len(panel.keys), "refit_epochs": epochs, **choice.figures}
    metrics |= {"forecast_series_per_s": forecast_rate, "phase_seconds": clock.seconds}
    if is_main_process():  # 8: under torchrun every rank computed the same; rank 0 writes
        write_outputs(forecast, choice, panel, models, (tsp, drivers), saved=saved, metrics=metrics, clock=clock)
    logger.info("Done in %s", clock)
    return metrics


def run_predict(cfg: SimpleNamespace) -> dict:
    """Forecast new data with FINAL_MODEL_DIR, without training; drivers of the coming weeks from FUTURE_PATH. A CSV
    of more than PREDICT_PART_ROWS rows is read, forecast and written one part of its series at a time."""
    results, clock = Path(cfg.RESULTS_DIR), PhaseClock()
    check_output_dirs([results], 1)
    models, scalers, conformal, saved = load_artifacts(Path(cfg.FINAL_MODEL_DIR), method=cfg.FORECAST_METHOD)
    device = "cuda" if torch.cuda.is_available() and not cfg.USE_CPU else "cpu"
    models = {name: model.to(device) for name, model in models.items()}
    clock.lap("load model")
    columns, horizon = _columns(saved), int(saved["PREDICTION_LENGTH"])
    settings, date_column = saved | {"FUTURE_PATH": cfg.FUTURE_PATH}, columns["date_column"]
    inputs = predict_inputs(
        cfg.DATA_PATH,
        cfg.FUTURE_PATH,
        columns=columns,
        horizon=horizon,
        part_rows=cfg.PREDICT_PART_ROWS,
        work_dir=results,
    )
    n_series, new, examples = 0, 0, []
    with contextlib.closing(inputs), ForecastCsv(results / "previsoes.csv", date_column=date_column) as out:
        for sales, ahead, span, source in inputs:
            clock.lap("read")
            panel, _ = weekly_panel(sales, ahead, settings=settings, source=source, span=span)
            data = scale_panel(panel, *scalers)
            n_series, new = n_series + len(panel.keys), new + (~data.scaling.known).sum()
            examples += panel.keys[~data.scaling.known].head(10 - len(examples)).to_dict("records")
            clock.lap("preprocess")
            point = forecast_future(
                models, data, conformal, saved["SELECTION"], horizon=horizon, date_column=date_column
            )
            clock.lap("forecast")
            out.write(point)
            clock.lap("write")
    if new:
        logger.warning(
            "%d series were not in training; scaled on their own history and flagged new_series: %s", new, examples
        )
    logger.info("Done in %s", clock)
    return {"n_series": n_series, "n_new_series": int(new), "phase_seconds": clock.seconds}


def _one_line(err: BaseException, batch_size: int) -> str:
    """The error as the user should read it: what failed and what to change."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return (
            f"CUDA out of memory with BATCH_SIZE={batch_size} (evaluation batches are 4x that); "
            f"try --BATCH_SIZE={max(1, batch_size // 2)}"
        )
    return str(err)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the pipeline; return its metrics. Settings and input errors end the process with one line (exit 2; the
    traceback with --DEBUG=True); --help lists the settings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)  # ours, over granite-tsfm's import-time one
    if {"-h", "--help"} & set(argv):
        sys.stdout.write(config.help_text() + "\n")
        raise SystemExit(0)
    try:
        cfg = config.resolve(argv, os.environ)
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s (python ttm_model.py --help lists every setting)", err)
        raise SystemExit(2) from None
    logging.getLogger().setLevel(cfg.LOG_LEVEL if is_main_process() else "WARNING")  # one log under torchrun
    logger.info("Settings: %s", json.dumps(vars(cfg), default=str))
    set_seed(cfg.SEED)
    try:
        if cfg.MODE == "predict":
            return run_predict(cfg)
        init_distributed(cfg.USE_CPU)
        return run_train(cfg)
    except (InputError, FileNotFoundError, torch.cuda.OutOfMemoryError) as err:
        if cfg.DEBUG:
            raise
        logger.error("%s", _one_line(err, cfg.BATCH_SIZE))
        raise SystemExit(2) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
