"""Fine-tune IBM's TinyTimeMixer (TTM) on weekly sales (vendas) and revenue (faturamento) per product x UF.

    python ttm_model.py                                        # train, evaluate, forecast (synthetic data if no CSV)
    python ttm_model.py --DATA_PATH=dados/minha_base.csv --TARGET_COLUMNS=faturamento
    python ttm_model.py --PRETRAINED_MODEL=../shared/ttm-weights/ttm-90-30-ft-l1   # local model folder, offline
    python ttm_model.py --MODE=predict --DATA_PATH=novos.csv   # forecast with final_ttm_model/, no training

Sections: (1) load, (2) weekly resampling + per product-UF scaling, (3) split, (4) model, (5) train + save;
then evaluation against baselines and the forecast of the next PREDICTION_LENGTH weeks. Settings: config.py.
"""

import copy
import csv
import difflib
import fnmatch
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from tsfm_public import TimeSeriesPreprocessor
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor
from tsfm_public.toolkit.get_model import get_model

import config

logger = logging.getLogger("ttm_model")

WEEKLY_FREQ_TOKEN = 9  # tsfm_public DEFAULT_FREQUENCY_MAPPING["W"]
PACKAGES = ("torch", "transformers", "granite-tsfm", "pandas", "numpy", "scikit-learn")


class InputError(ValueError):
    """A problem with the user's data or settings; reported as one line, without a traceback."""


# ---- 1. load ----------------------------------------------------------------------------------------------------


def _sniff_csv(path: Path) -> tuple[str, str, str, str]:
    """Return (encoding, separator, decimal mark, header line) of a CSV file from its first 64 KB."""
    with path.open("rb") as f:
        head = f.read(65536)
    encoding = "utf-8-sig"
    try:
        text = head.decode(encoding)
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a multi-byte character cut at the 64 KB boundary
            encoding = "latin-1"
        text = head.decode(encoding, errors="ignore")
    header = text.splitlines()[0] if text.strip() else ""
    sep = max((";", ",", "\t"), key=header.count)
    decimal = "," if sep != "," and any(_has_decimal_comma(line, sep) for line in text.splitlines()[1:200]) else "."
    return encoding, sep, decimal, header


def _has_decimal_comma(line: str, sep: str) -> bool:
    return any(
        field.strip().replace(".", "").replace(",", "", 1).lstrip("-").isdigit() and "," in field
        for field in line.split(sep)
    )


def _rows(mask: pd.Series | np.ndarray, limit: int = 5) -> str:
    """File line numbers (header is line 1) of the first offending rows."""
    lines = np.flatnonzero(np.asarray(mask)) + 2
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"line(s) {', '.join(map(str, lines[:limit]))}{more}"


def _strip(text: pd.Series) -> pd.Categorical:
    """Text with surrounding spaces removed, kept categorical: ids and dates repeat, so each distinct value is
    stripped (and, for dates, parsed) once."""
    codes, uniques = pd.factorize(text)
    stripped_codes, stripped = pd.factorize(pd.Index(uniques.astype(str)).str.strip(), sort=True)
    return pd.Categorical.from_codes(stripped_codes[codes], stripped)


def _parse_dates(text: pd.Categorical, path: str, column: str) -> np.ndarray:
    """ISO dates (2024-01-31) and Brazilian dd/mm/yyyy dates, also mixed in one file, parsed once per distinct date."""
    distinct = text.categories.to_series()
    dates = pd.to_datetime(distinct, format="ISO8601", errors="coerce")
    brazilian = dates.isna()
    if brazilian.any():
        dates[brazilian] = pd.to_datetime(distinct[brazilian], format="%d/%m/%Y", errors="coerce")
        read = int((brazilian & dates.notna()).to_numpy()[text.codes].sum())
        if read:
            logger.warning("%s: read %d date(s) in column %r as dd/mm/yyyy", path, read, column)
    if dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)
    bad = dates.isna().to_numpy()[text.codes]
    if bad.any():
        raise InputError(
            f"{path}: column {column!r} has unparseable dates at {_rows(bad)} "
            f"(e.g. {text[bad][0]!r}); use YYYY-MM-DD or dd/mm/yyyy"
        )
    return dates.to_numpy()[text.codes]


def _parse_numbers(text: pd.Series, *, path: str, column: str, decimal: str, thousands: str | None) -> pd.Series:
    """Non-negative floats from a target column (text when the reader could not parse it: separators to repair)."""
    values, empty = text, text.isna()
    if not pd.api.types.is_numeric_dtype(values):
        raw = values.astype(str).str.strip()
        if thousands:
            raw = raw.str.replace(thousands, "", regex=False)
        if decimal == ",":
            raw = raw.str.replace(",", ".", regex=False)
        values = pd.to_numeric(raw, errors="coerce")
        empty = raw.str.lower().isin(["", "nan", "na", "null", "none"])
        bad = values.isna() & ~empty
        if bad.any():
            raise InputError(
                f"{path}: column {column!r} has non-numeric values at {_rows(bad)} "
                f"(e.g. {text[bad].iloc[0]!r}); use plain numbers such as 1234.5 or 1.234,5"
            )
    if empty.any():
        raise InputError(
            f"{path}: column {column!r} has missing values (NaN/empty) at {_rows(empty)}; "
            "fill them (0 for weeks without sales) or delete those rows"
        )
    if (values < 0).any():
        raise InputError(
            f"{path}: column {column!r} has negative values at {_rows(values < 0)}; "
            "net returns into the week's sales or remove those rows"
        )
    return values.astype("float64")


def _column_names(path: str, header: list[str], required: Sequence[str]) -> dict[str, str]:
    """Each raw header name -> its name as used here (stripped, lower case); every required column must be there."""
    names = {raw: raw.strip().lower() for raw in header}
    missing = [c for c in required if c not in names.values()]
    if missing:
        hints = [
            f"{m!r} (found {close[0]!r}?)" if (close := difflib.get_close_matches(m, names.values(), n=1)) else repr(m)
            for m in missing
        ]
        raise InputError(
            f"{path}: missing column(s) {', '.join(hints)}; the header has {list(names.values())}; "
            f"rename the column(s) or change TARGET_COLUMNS/ID_COLUMNS/DATE_COLUMN"
        )
    extra = [name for name in names.values() if name not in required]
    if extra:
        logger.warning("%s: ignoring extra column(s) %s", path, extra)
    return {raw: name for raw, name in names.items() if name in required}


def _read_columns(
    file: Path, path: str, names: dict[str, str], *, text_columns: Sequence[str], encoding: str, sep: str, decimal: str
) -> pd.DataFrame:
    """The `names` columns of the file: text ones as categoricals, numbers as floats, or as text when pyarrow cannot
    read them (thousands separators, typos) for _parse_numbers to repair or report.

    pyarrow's reader: 0.05 s against 0.13 s for pandas.read_csv on 520,000 rows (tests/benchmarks/bench_predict.py).
    """
    text = pa.dictionary(pa.int32(), pa.string())
    convert = pa_csv.ConvertOptions(
        include_columns=list(names),
        column_types={raw: text for raw, name in names.items() if name in text_columns},
        decimal_point=decimal,
    )
    parse = pa_csv.ParseOptions(delimiter=sep)
    try:
        try:
            sniffed = pa_csv.ReadOptions(encoding=encoding.replace("utf-8-sig", "utf8"))  # pyarrow skips a BOM itself
            table = pa_csv.read_csv(file, sniffed, parse, convert)
        except pa.ArrowInvalid as err:
            if "UTF8" not in str(err):
                raise
            table = pa_csv.read_csv(file, pa_csv.ReadOptions(encoding="latin-1"), parse, convert)  # a late byte
    except pa.ArrowInvalid as err:
        raise InputError(
            f"{path}: not a readable CSV ({str(err).splitlines()[0]}); export it as CSV with ',' or ';' separators"
        ) from err
    df = table.rename_columns([names[raw] for raw in table.column_names]).to_pandas(
        split_blocks=True, self_destruct=True
    )
    del table
    pa.default_memory_pool().release_unused()  # hand the parse buffers back to the OS, not kept for later pyarrow use
    if df.empty:
        raise InputError(f"{path}: header only, no data rows; add at least one row per week, product and UF")
    return df


def read_sales_csv(
    path: str, *, date_column: str, id_columns: Sequence[str], target_columns: Sequence[str]
) -> pd.DataFrame:
    """Read and validate the sales CSV; ids stay text as written (categoricals, surrounding spaces removed).

    Raises:
        FileNotFoundError, InputError: with the file, column, first offending lines and what to change.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(
            f"{path}: file not found; set --DATA_PATH=<your CSV> (columns {date_column}, "
            f"{', '.join(id_columns)}, {', '.join(target_columns)})"
        )
    if file.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV file; set --DATA_PATH to the CSV inside it")
    try:
        encoding, sep, decimal, header_line = _sniff_csv(file)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); check the file's permissions") from err
    if not header_line.strip():
        raise InputError(f"{path}: file is empty; expected a header line and one row per week, product and UF")
    thousands = "." if decimal == "," else ("," if sep != "," else None)
    names = _column_names(
        path, next(csv.reader([header_line], delimiter=sep)), [date_column, *id_columns, *target_columns]
    )
    df = _read_columns(
        file, path, names, text_columns=(date_column, *id_columns), encoding=encoding, sep=sep, decimal=decimal
    )
    out = pd.DataFrame({date_column: _parse_dates(_strip(df[date_column]), path, date_column)})
    for col in id_columns:
        ids = _strip(df[col])
        if (ids == "").any():
            raise InputError(f"{path}: column {col!r} is empty at {_rows(ids == '')}; fill in the id")
        out[col] = ids
    for col in target_columns:
        out[col] = _parse_numbers(df[col], path=path, column=col, decimal=decimal, thousands=thousands)
    logger.info(
        "Loaded %s: %d rows, %s to %s", path, len(out), out[date_column].min().date(), out[date_column].max().date()
    )
    return out


def synthesize_sales(
    *,
    seed: int,
    date_column: str,
    id_columns: Sequence[str],
    n_products: int = 8,
    ufs: Sequence[str] = ("SP", "RJ", "MG", "RS", "PR", "BA"),
    n_weeks: int = 260,
) -> pd.DataFrame:
    """A realistic weekly panel: trend, yearly season, promotions, a drifting price, new and intermittent series."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end="2025-12-28", periods=n_weeks, freq="W-SUN")
    week = np.arange(n_weeks)
    frames = []
    for p in range(n_products):
        price0 = rng.uniform(5, 80)
        for u, uf in enumerate(ufs):
            level = rng.lognormal(3.5, 0.7) * (1.0 - 0.12 * u)
            season = 1 + rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (week + rng.integers(52)) / 52.18)
            christmas = 1 + 0.5 * (dates.isocalendar().week.to_numpy() >= 50)
            promo = rng.random(n_weeks) < 0.07
            price = price0 * (1.0008 + rng.normal(0, 0.0004)) ** week * np.where(promo, 0.8, 1.0)
            rate = level * (1 + rng.normal(0.002, 0.002) * week) * season * christmas * np.where(promo, 1.8, 1.0)
            if (p + u) % 13 == 5:  # intermittent: slow movers with many zero weeks
                rate = rate * 0.02
            units = rng.poisson(np.clip(rate, 0, None)).astype(float)
            start = n_weeks - rng.integers(40, 90) if (p * len(ufs) + u) % 17 == 3 else 0  # a few new launches
            frames.append(
                pd.DataFrame(
                    {
                        date_column: dates[start:],
                        id_columns[0]: f"P{p + 1:03d}",
                        id_columns[1]: uf,
                        "vendas": units[start:],
                        "faturamento": np.round(units[start:] * price[start:], 2),
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)
    keep = (df["vendas"] > 0) | (rng.random(len(df)) < 0.5)  # exports often omit weeks without sales
    return df[keep].reset_index(drop=True)


# ---- 2. weekly resampling + per product-UF scaling ----------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """Weekly series on one calendar: values[s, t, c] is target c of series s in week dates[t]."""

    keys: pd.DataFrame  # one row per series: the id columns (text)
    dates: pd.DatetimeIndex  # week-end dates, consecutive weeks
    values: np.ndarray  # (series, weeks, targets) float64, 0 before a series starts
    start: np.ndarray  # (series,) index of each series' first week
    targets: tuple


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
    anchor: str = "auto",
    source: str = "data",
) -> tuple[Panel, str]:
    """Sum rows into weeks (one anchor for all), fill missing weeks with 0; return the panel and the anchor used.

    Integer week numbers and np.bincount instead of groupby + resample: 0.08 s instead of 0.4 s on 2,000 series x
    260 weeks (tests/benchmarks/bench_predict.py); a test checks the result against pandas.
    """
    ids, targets = list(id_columns), list(target_columns)
    day = df[date_column].to_numpy("datetime64[D]").astype(np.int64)  # days since 1970-01-01, a Thursday
    day_of_week = (day + 3) % 7  # Monday = 0
    anchor = _week_anchor(day_of_week, anchor)
    week_end = day + (pd.tseries.frequencies.to_offset(anchor).weekday - day_of_week) % 7
    col = (week_end - week_end.min()) // 7
    codes = df.groupby(ids, sort=True, observed=True).ngroup().to_numpy()
    by_series = np.argsort(codes, kind="stable")  # file order inside each series
    same_series = np.diff(codes[by_series]) == 0
    keys = df[ids].iloc[by_series[np.r_[True, ~same_series]]].reset_index(drop=True).astype(object)  # text ids
    n_series, n_weeks = len(keys), int(col.max()) + 1
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
    dates = pd.date_range(pd.Timestamp(week_end.min(), unit="D"), periods=n_weeks, freq=anchor)
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
    return Panel(keys, dates, values, start, tuple(target_columns)), anchor


def fit_group_scaler(panel: Panel, *, fit_end: np.ndarray, id_columns: Sequence[str]) -> TimeSeriesPreprocessor:
    """Fit granite-tsfm's per product-UF standard scaler on each series' weeks before fit_end[s]."""
    t = np.arange(len(panel.dates))
    rows_s, rows_t = np.nonzero((t >= panel.start[:, None]) & (t < fit_end[:, None]))
    frame = panel.keys.iloc[rows_s].reset_index(drop=True)
    frame["date"] = panel.dates[rows_t]
    frame[list(panel.targets)] = panel.values[rows_s, rows_t]
    tsp = TimeSeriesPreprocessor(
        timestamp_column="date",
        id_columns=list(id_columns),
        target_columns=list(panel.targets),
        scaling=True,
        scaler_type="standard",
        freq="W",
        encode_categorical=False,
    )
    return tsp.train(frame)


def scaler_arrays(tsp: TimeSeriesPreprocessor, keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-series (mean, scale) of the fitted scaler, shape (series, targets), and a mask of series it knows."""
    n = len(tsp.target_columns)
    mean, scale, known = np.zeros((len(keys), n)), np.ones((len(keys), n)), np.zeros(len(keys), bool)
    for i, key in enumerate(keys.itertuples(index=False, name=None)):
        scaler = tsp.target_scaler_dict.get(key if len(key) > 1 else key[0])
        if scaler is not None:
            mean[i], scale[i], known[i] = scaler.mean_, scaler.scale_, True
    return mean, scale, known


# ---- 3. split keeping every product-UF combination -----------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Window cuts: a window at cut t reads weeks < t and forecasts weeks t .. t+horizon-1."""

    valid_start: int
    test_start: int
    train: tuple[np.ndarray, np.ndarray]  # (series index, cut) of every training window
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    fit_end: np.ndarray  # per series: scaler fitted on weeks before this (never test weeks for evaluated series)


def split_by_time(panel: Panel, *, horizon: int, min_context: int, stride: int, max_windows: int = 0) -> Split:
    """Cut every series at the same dates: the last `horizon` weeks test, the `horizon` before validation.

    Training windows end every `stride` weeks back from the validation window; the stride grows until there are at
    most `max_windows` of them (0: no limit), since neighbouring windows share all but `stride` weeks.

    Raises:
        InputError: if the calendar is too short for a test and a validation window after min_context weeks.
    """
    n_weeks = len(panel.dates)
    test_start, valid_start = n_weeks - horizon, n_weeks - 2 * horizon
    if valid_start - horizon < min_context:
        raise InputError(
            f"data cover {n_weeks} weeks; training needs at least {min_context + 3 * horizon} "
            f"(MIN_CONTEXT_WEEKS {min_context} + 3 x PREDICTION_LENGTH {horizon}); lower those settings"
        )
    series = np.arange(len(panel.keys))
    first_cut = panel.start + min_context
    in_test, in_valid = first_cut <= test_start, first_cut <= valid_start
    last_cut = valid_start - horizon

    def counts_at(stride: int) -> np.ndarray:
        return np.where(first_cut <= last_cut, (last_cut - first_cut) // stride + 1, 0)

    counts = counts_at(stride)
    if max_windows and counts.sum() > max_windows:
        requested, widest = stride, max(1, last_cut - first_cut.min() + 1)  # widest: one window per series
        stride = min(max(stride, math.ceil(counts_at(1).sum() / max_windows)), widest)
        while counts_at(stride).sum() > max_windows and stride < widest:
            stride += 1
        counts = counts_at(stride)
        logger.info(
            "TRAIN_STRIDE %d -> %d so that an epoch has at most MAX_TRAIN_WINDOWS=%d windows%s",
            requested,
            stride,
            max_windows,
            f" (not possible: {counts.sum()} series need one each)" if counts.sum() > max_windows else "",
        )
    train_s = np.repeat(series, counts)
    train_t = last_cut - stride * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    fit_end = np.where(panel.start < valid_start, valid_start, np.where(panel.start < test_start, test_start, n_weeks))
    left_out = panel.keys[~(in_test & in_valid & (counts > 0))]
    if len(left_out):
        logger.warning(
            "%d series are too new for every split (need %d weeks before the validation window); they "
            "are forecast but left out of training/evaluation where too short: %s",
            len(left_out),
            min_context + horizon,
            left_out.head(10).to_dict("records"),
        )
    logger.info(
        "Split: train windows %d (targets before %s), valid %d series (%s..), test %d series (%s..)",
        len(train_s),
        panel.dates[valid_start].date(),
        in_valid.sum(),
        panel.dates[valid_start].date(),
        in_test.sum(),
        panel.dates[test_start].date(),
    )
    return Split(
        valid_start,
        test_start,
        (train_s, train_t),
        (series[in_valid], np.full(in_valid.sum(), valid_start)),
        (series[in_test], np.full(in_test.sum(), test_start)),
        fit_end,
    )


def gather_windows(
    scaled: np.ndarray, start: np.ndarray, series: np.ndarray, cuts: np.ndarray, *, context: int, horizon: int = 0
) -> dict[str, torch.Tensor]:
    """Batch of model inputs: `context` weeks before each cut (zero-padded, masked before a series starts)."""
    t = cuts[:, None] + np.arange(-context, horizon)
    observed = (t >= start[series, None]) & (t >= 0)
    values = scaled[series[:, None], np.clip(t, 0, scaled.shape[1] - 1)] * observed[..., None]
    past = torch.from_numpy(values[:, :context].astype(np.float32))
    batch = {
        "past_values": past,
        "past_observed_mask": torch.from_numpy(np.repeat(observed[:, :context, None], scaled.shape[2], axis=2)),
    }
    if horizon:
        batch["future_values"] = torch.from_numpy(values[:, context:].astype(np.float32))
    return batch


class WindowDataset(torch.utils.data.Dataset):
    """Forecast windows cut from one scaled array (no per-item pandas): what ForecastDFDataset yields, plus masks."""

    def __init__(
        self,
        scaled: np.ndarray,
        start: np.ndarray,
        windows: tuple[np.ndarray, np.ndarray],
        *,
        context: int,
        horizon: int,
        freq_token: int | None,
    ):
        self.scaled, self.start, (self.series, self.cuts) = scaled, start, windows
        self.context, self.horizon, self.freq_token = context, horizon, freq_token

    def __len__(self) -> int:
        return len(self.series)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch in one vectorised gather; the DataLoader calls this instead of __getitem__ per window."""
        idx = np.asarray(indices)
        batch = gather_windows(
            self.scaled, self.start, self.series[idx], self.cuts[idx], context=self.context, horizon=self.horizon
        )
        if self.freq_token is not None:
            batch["freq_token"] = torch.full((len(idx),), self.freq_token)
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate_windows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataLoader collate for WindowDataset: __getitems__ already returns the whole batch."""
    return batch


# ---- 4. model -----------------------------------------------------------------------------------------------------


def build_model(
    model_path: str, *, context_length: int, prediction_length: int, prefer_l1: bool, num_channels: int
) -> torch.nn.Module:
    """Load the pretrained TTM variant for context/horizon (hub id or local folder) with get_model."""
    local = Path(model_path).expanduser()
    if not local.exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") != 1):
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: folder not found; give a folder with config.json and "
            "model.safetensors, or a hub id such as ibm-granite/granite-timeseries-ttm-r2"
        )
    try:
        model = get_model(
            str(local) if local.exists() else model_path,
            context_length=context_length,
            prediction_length=prediction_length,
            freq="W",
            freq_prefix_tuning=True,
            prefer_l1_loss=prefer_l1,
            num_input_channels=num_channels,
        )
    except OSError as err:
        raise InputError(
            f"PRETRAINED_MODEL={model_path}: could not load it ({str(err).splitlines()[0]}). Offline? "
            "Download the model once, or point to a local folder: "
            "--PRETRAINED_MODEL=/path/to/ttm-90-30-ft-l1"
        ) from err
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
    return model


def freq_token_for(model: torch.nn.Module) -> int | None:
    """The weekly frequency token, for models pretrained with one (r2.1); None otherwise."""
    return WEEKLY_FREQ_TOKEN if model.config.resolution_prefix_tuning else None


def unfreeze_only(model: torch.nn.Module, name_parts: Sequence[str]) -> float:
    """Freeze all parameters except those whose name contains one of name_parts (globs such as "decoder*fc1" too).

    Returns the trainable fraction.
    """
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad = any(fnmatch.fnmatchcase(name, f"*{part}*") for part in name_parts)
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
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


# ---- 5. train + save ------------------------------------------------------------------------------------------------


def steps_per_epoch(n_windows: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch, as OneCycleLR must know them."""
    return math.ceil(n_windows / (batch_size * grad_accum))


def make_trainer(
    model: torch.nn.Module,
    train: torch.utils.data.Dataset,
    valid: torch.utils.data.Dataset,
    *,
    out_dir: Path,
    run_name: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    workers: int,
    use_cpu: bool,
) -> Trainer:
    """HF Trainer: AdamW over trainable parameters, OneCycleLR, early stopping on eval_loss, TensorBoard logs."""
    steps = steps_per_epoch(len(train), batch_size)
    args = TrainingArguments(
        output_dir=str(out_dir),
        run_name=run_name,
        logging_dir=str(out_dir / "logs" / run_name),
        report_to=["tensorboard"],
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=max(1, steps // 4),
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4 * batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=workers,
        use_cpu=use_cpu,
        label_names=["future_values"],
        remove_unused_columns=False,  # batches come whole from WindowDataset.__getitems__
        prediction_loss_only=True,
        save_safetensors=True,
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_pin_memory=torch.cuda.is_available() and not use_cpu,
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        optimizers=(optimizer, scheduler),
        data_collator=collate_windows,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_artifacts(
    model: torch.nn.Module,
    tsp: TimeSeriesPreprocessor,
    conformal: PostHocProbabilisticProcessor | None,
    settings: dict,
    final_dir: Path,
) -> None:
    """Write model, preprocessor.pkl, conformal and settings beside final_dir, then swap it in atomically."""
    staging, backup = final_dir.with_name(final_dir.name + ".tmp"), final_dir.with_name(final_dir.name + ".bak")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    # Plain pickle: preprocessor.pkl loads 10x faster than with joblib, and conformal.pkl in 1 ms against 50 ms for
    # PostHocProbabilisticProcessor.from_pretrained (which formats the whole 1.2 MB config for a log line).
    with open(staging / "preprocessor.pkl", "wb") as f:
        pickle.dump(tsp, f, protocol=pickle.HIGHEST_PROTOCOL)
    if conformal is not None:
        with open(staging / "conformal.pkl", "wb") as f:
            pickle.dump(conformal, f, protocol=pickle.HIGHEST_PROTOCOL)
    (staging / "settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    manifest = {
        "tool": "ttm_model",
        "versions": {p: version(p) for p in PACKAGES},
        "sha256": {f.name: _sha256(f) for f in sorted(staging.iterdir())},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if final_dir.exists():
        shutil.rmtree(backup, ignore_errors=True)
        final_dir.rename(backup)  # kept until the new folder is in place
    staging.rename(final_dir)
    shutil.rmtree(backup, ignore_errors=True)
    logger.info("Saved %s and manifest.json to %s/", ", ".join(manifest["sha256"]), final_dir)


def load_artifacts(
    final_dir: Path,
) -> tuple[torch.nn.Module, TimeSeriesPreprocessor, PostHocProbabilisticProcessor | None, dict]:
    """Load what save_artifacts wrote, after checking every file against manifest.json (no foreign pickles)."""
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
    if "preprocessor.pkl" not in manifest.get("sha256", {}):
        raise InputError(f"{final_dir}/manifest.json does not list preprocessor.pkl; refusing to unpickle it")
    for package, wrote in manifest.get("versions", {}).items():
        if version(package) != wrote:
            logger.warning("%s: written with %s %s, running %s", final_dir, package, wrote, version(package))
    from tsfm_public import TinyTimeMixerForPrediction

    model = TinyTimeMixerForPrediction.from_pretrained(final_dir)
    settings = json.loads((final_dir / "settings.json").read_text(encoding="utf-8"))
    with open(final_dir / "preprocessor.pkl", "rb") as f:
        tsp = pickle.load(f)
    conformal = None
    if "conformal.pkl" in manifest["sha256"]:
        with open(final_dir / "conformal.pkl", "rb") as f:
            conformal = pickle.load(f)
    else:
        logger.warning(
            "%s: no conformal.pkl (training had too few validation windows, or the folder is older); previsoes.csv "
            "gets no interval bounds until you retrain",
            final_dir,
        )
    return model, tsp, conformal, settings


# ---- evaluation and forecast ----------------------------------------------------------------------------------------


@torch.no_grad()
def forecast_scaled(
    model: torch.nn.Module,
    scaled: np.ndarray,
    start: np.ndarray,
    windows: tuple[np.ndarray, np.ndarray],
    *,
    horizon: int,
    batch_size: int | None = None,
) -> np.ndarray:
    """Point forecasts, shape (windows, horizon, targets), in scaled units.

    batch_size None: 256 windows on CPU (1,430 series/s on 2 cores against 1,400 at 128 and 1,290 at 1,024;
    tests/benchmarks/bench_predict.py), 4,096 on GPU.
    """
    model.eval()
    device, token = next(model.parameters()).device, freq_token_for(model)
    batch_size = batch_size or (256 if device.type == "cpu" else 4096)
    series, cuts = windows
    out = [np.zeros((0, horizon, scaled.shape[2]), np.float32)]
    for i in range(0, len(series), batch_size):
        batch = gather_windows(
            scaled, start, series[i : i + batch_size], cuts[i : i + batch_size], context=model.config.context_length
        )
        if token is not None:
            batch["freq_token"] = torch.full((len(batch["past_values"]),), token)
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(model(**batch, return_loss=False).prediction_outputs[:, :horizon].float().cpu().numpy())
    return np.concatenate(out)


def mase_scale(values: np.ndarray, start: np.ndarray, end: int) -> np.ndarray:
    """In-sample seasonal-naive-52 MAE per series and target before week `end` (lag 1 with < 53 weeks of history)."""
    lag = np.where(end - start >= 53, 52, 1)
    t = np.arange(values.shape[1])
    scale = np.full((len(values), values.shape[2]), np.nan)
    for lag_value in (1, 52):
        rows = lag == lag_value
        valid = (t[lag_value:] - lag_value >= start[rows, None]) & (t[lag_value:] < end)
        diff = np.abs(values[rows, lag_value:] - values[rows, :-lag_value]) * valid[..., None]
        scale[rows] = diff.sum(1) / np.maximum(valid.sum(1), 1)[:, None]
    return scale


def baseline_forecasts(
    values: np.ndarray, start: np.ndarray, windows: tuple[np.ndarray, np.ndarray], horizon: int
) -> dict[str, np.ndarray]:
    """Seasonal naive (same week last year; last value when the series is younger) and naive (last value)."""
    series, cuts = windows
    naive = np.repeat(values[series, cuts - 1][:, None], horizon, axis=1)
    t = cuts[:, None] + np.arange(horizon) - 52
    seasonal = np.where((t >= start[series, None])[..., None], values[series[:, None], np.maximum(t, 0)], naive)
    return {"seasonal_naive": seasonal, "naive": naive}


def error_metrics(y: np.ndarray, pred: np.ndarray, scale: np.ndarray | float) -> dict[str, float | np.ndarray]:
    """MAE, RMSE, WAPE, MASE and bias over the last axis (or all of it when y is 1-D)."""
    err = pred - y
    total = np.abs(y).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mae = np.abs(err).mean(-1)
        return {
            "mae": mae,
            "rmse": np.sqrt((err**2).mean(-1)),
            "wape": np.abs(err).sum(-1) / total,
            "mase": mae / scale,
            "bias": err.sum(-1) / total,
        }


def evaluate_methods(panel: Panel, split: Split, forecasts: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict]:
    """Per-series and overall metrics of each method on the test window, in original units."""
    series, cuts = split.test
    horizon = forecasts[next(iter(forecasts))].shape[1]
    y = panel.values[series[:, None], cuts[:, None] + np.arange(horizon)]
    scale = mase_scale(panel.values, panel.start, split.test_start)[series]
    rows, overall = [], {}
    for method, pred in forecasts.items():
        for c, target in enumerate(panel.targets):
            per_series = error_metrics(y[..., c], pred[..., c], scale[:, c])
            rows.append(panel.keys.iloc[series].assign(target=target, method=method, **per_series))
            pooled = error_metrics(y[..., c].ravel(), pred[..., c].ravel(), 1.0)
            pooled["mase"] = float(np.nanmean(np.where(np.isfinite(per_series["mase"]), per_series["mase"], np.nan)))
            overall.setdefault(target, {})[method] = {k: float(v) for k, v in pooled.items()}
    return pd.concat(rows, ignore_index=True), overall


def fit_intervals(y_true: np.ndarray, y_pred: np.ndarray, level: float) -> PostHocProbabilisticProcessor | None:
    """Split-conformal intervals calibrated on validation forecasts (scaled units), or None if too few."""
    alpha = 1 - level
    if len(y_true) < math.ceil(1 / alpha):
        logger.warning(
            "Only %d validation windows: too few for %.0f%% conformal intervals; none written",
            len(y_true),
            100 * level,
        )
        return None
    conformal = PostHocProbabilisticProcessor(
        quantiles=[alpha / 2, 1 - alpha / 2], method="conformal", nonconformity_score="absolute_error"
    )
    return conformal.train(y_true.astype(np.float64), y_pred.astype(np.float64))


def unscale(scaled: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Back to original units, clipped at 0 (sales and revenue cannot be negative)."""
    return np.clip(scaled * scale[:, None] + mean[:, None], 0, None)


def predict_with_intervals(
    model: torch.nn.Module,
    scaled: np.ndarray,
    panel: Panel,
    windows: tuple,
    mean: np.ndarray,
    scale: np.ndarray,
    conformal: PostHocProbabilisticProcessor | None,
    horizon: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Point forecast and interval bounds in original units for the given windows."""
    pred = forecast_scaled(model, scaled, panel.start, windows, horizon=horizon)
    m, s = mean[windows[0]], scale[windows[0]]
    if conformal is None:
        return unscale(pred, m, s), None, None
    bounds = conformal.predict(pred.astype(np.float64))
    return unscale(pred, m, s), unscale(bounds[..., 0], m, s), unscale(bounds[..., 1], m, s)


def forecast_frame(
    panel: Panel,
    point: np.ndarray,
    lower: np.ndarray | None,
    upper: np.ndarray | None,
    *,
    date_column: str,
    new_series: np.ndarray,
) -> pd.DataFrame:
    """previsoes.csv rows: every series x the weeks after the last date, point forecast and bounds per target."""
    horizon = point.shape[1]
    dates = pd.date_range(panel.dates[-1], periods=horizon + 1, freq=panel.dates.freq)[1:]
    frame = pd.DataFrame({date_column: np.tile(dates, len(panel.keys))})
    for col in panel.keys.columns:
        frame[col] = np.repeat(panel.keys[col].to_numpy(), horizon)
    for c, target in enumerate(panel.targets):
        frame[target] = point[..., c].ravel()
        if lower is not None:
            frame[f"{target}_lower"] = lower[..., c].ravel()
            frame[f"{target}_upper"] = upper[..., c].ravel()
    frame["new_series"] = np.repeat(new_series, horizon)
    return frame


def forecast_future(
    model: torch.nn.Module,
    scaled: np.ndarray,
    panel: Panel,
    mean: np.ndarray,
    scale: np.ndarray,
    conformal: PostHocProbabilisticProcessor | None,
    horizon: int,
    *,
    date_column: str,
    new_series: np.ndarray,
) -> pd.DataFrame:
    """previsoes.csv rows: every series forecast from its last week (point and bounds, original units)."""
    windows = (np.arange(len(panel.keys)), np.full(len(panel.keys), len(panel.dates)))
    forecasts = predict_with_intervals(model, scaled, panel, windows, mean, scale, conformal, horizon)
    return forecast_frame(panel, *forecasts, date_column=date_column, new_series=new_series)


def write_forecasts(frame: pd.DataFrame, path: Path, *, date_column: str) -> None:
    """previsoes.csv with dates as YYYY-MM-DD and 4 decimals, atomically.

    pyarrow's writer: 0.04 s against 0.20 s for DataFrame.to_csv on 2,000 series (float formatting); it quotes text.
    """
    table = pa.Table.from_pandas(frame.round(4), preserve_index=False)
    column = table.schema.get_field_index(date_column)
    table = table.set_column(column, date_column, table[date_column].cast(pa.date32()))
    staging = path.with_name(path.name + ".tmp")
    pa_csv.write_csv(table, staging)
    staging.replace(path)


def plot_results(
    panel: Panel, future: pd.DataFrame, overall: dict, out_dir: Path, *, top_n: int, date_column: str, level: float
) -> None:
    """PNG plots: history + forecast + interval of the top series by revenue, and test accuracy by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    target = panel.targets[-1]
    top = np.argsort(-panel.values[..., -1].sum(1))[:top_n]
    ids = list(panel.keys.columns)
    for rank, s in enumerate(top, start=1):
        key = panel.keys.iloc[s]
        rows = future[(future[ids] == key.to_numpy()).all(axis=1)]
        fig, ax = plt.subplots(figsize=(10, 4))
        shown = slice(max(panel.start[s], len(panel.dates) - 104), None)
        ax.plot(panel.dates[shown], panel.values[s, shown, -1], label="history", color="black")
        ax.plot(rows[date_column], rows[target], label="forecast", color="tab:blue")
        if f"{target}_lower" in rows:
            ax.fill_between(
                rows[date_column],
                rows[f"{target}_lower"],
                rows[f"{target}_upper"],
                alpha=0.25,
                color="tab:blue",
                label=f"{100 * level:.0f}% interval",
            )
        ax.set_title(f"{target}: " + ", ".join(f"{k}={v}" for k, v in key.items()))
        ax.legend()
        fig.savefig(out_dir / f"forecast_{rank:02d}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    methods = list(next(iter(overall.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(overall)
    for i, (tgt, by_method) in enumerate(overall.items()):
        ax.bar(np.arange(len(methods)) + i * width, [by_method[m]["wape"] for m in methods], width, label=tgt)
    ax.set_xticks(np.arange(len(methods)) + width * (len(overall) - 1) / 2, methods)
    ax.set_ylabel("WAPE on the test window (lower is better)")
    ax.legend()
    fig.savefig(out_dir / "accuracy_by_method.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------------------------------------


class PhaseClock:
    """Wall time of the run's phases (seconds), for the log and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.seconds[phase], self._last = now - self._last, now
        return self.seconds[phase]

    def __str__(self) -> str:
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
        return f"{sum(self.seconds.values()):.1f} s ({phases})"


def check_output_dirs(dirs: Sequence[Path], min_free_mb: int) -> None:
    """Fail before any work if an output folder is not writable or its disk is nearly full."""
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write_test"
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


def resume_checkpoint(results: Path, fingerprint: str, fresh: bool) -> str | None:
    """Last checkpoint of an interrupted run with the same settings and data, else None (stale ones are removed)."""
    stamp = results / "run_fingerprint.txt"
    last = get_last_checkpoint(str(results)) if results.is_dir() else None
    same = stamp.is_file() and stamp.read_text() == fingerprint
    if last and same and not fresh:
        logger.info("Resuming the interrupted run from %s (use --FRESH_START=True to start over)", last)
        return last
    for old in results.glob("checkpoint-*"):
        shutil.rmtree(old)
    if last:
        logger.info(
            "Starting fresh: %s",
            "FRESH_START=True"
            if fresh
            else "settings or data changed since the checkpoints in %s were written" % results,
        )
    stamp.write_text(fingerprint)
    return None


def _fingerprint(cfg: dict, panel: Panel) -> str:
    digest = hashlib.sha256(
        json.dumps(
            {k: v for k, v in cfg.items() if k not in ("MODE", "LOG_LEVEL", "DEBUG", "FRESH_START")},
            sort_keys=True,
            default=str,
        ).encode()
    )
    digest.update(panel.values.tobytes())
    digest.update(pd.util.hash_pandas_object(panel.keys, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def load_sales(cfg, results: Path) -> pd.DataFrame:
    """The user's CSV, or synthetic data when the default DATA_PATH does not exist (saved for inspection)."""
    if cfg.DATA_PATH == config.DATA_PATH and not Path(cfg.DATA_PATH).exists() and cfg.MODE == "train":
        sales = synthesize_sales(seed=cfg.SEED, date_column=cfg.DATE_COLUMN, id_columns=cfg.ID_COLUMNS)
        sales = sales[[cfg.DATE_COLUMN, *cfg.ID_COLUMNS, *cfg.TARGET_COLUMNS]]
        sales.to_csv(results / "dados_sinteticos.csv", index=False)
        logger.warning(
            "SYNTHETIC DATA: %s not found, so training on a synthetic panel (%d rows, %d series), saved "
            "to %s. Put your CSV at %s or set --DATA_PATH.",
            cfg.DATA_PATH,
            len(sales),
            sales.groupby(list(cfg.ID_COLUMNS)).ngroups,
            results / "dados_sinteticos.csv",
            cfg.DATA_PATH,
        )
        return sales
    return read_sales_csv(
        cfg.DATA_PATH, date_column=cfg.DATE_COLUMN, id_columns=cfg.ID_COLUMNS, target_columns=cfg.TARGET_COLUMNS
    )


def run_train(cfg) -> dict:
    """Sections 1-5, then evaluation against baselines, the future forecast and the saved model."""
    results, final_dir = Path(cfg.RESULTS_DIR), Path(cfg.FINAL_MODEL_DIR)
    check_output_dirs([results, final_dir.resolve().parent], cfg.MIN_FREE_DISK_MB)
    clock = PhaseClock()
    sales = load_sales(cfg, results)  # 1
    clock.lap("load")
    panel, anchor = resample_weekly(  # 2
        sales,
        date_column=cfg.DATE_COLUMN,
        id_columns=cfg.ID_COLUMNS,
        target_columns=cfg.TARGET_COLUMNS,
        anchor=cfg.WEEK_ANCHOR,
        source=cfg.DATA_PATH,
    )
    split = split_by_time(  # 3
        panel,
        horizon=cfg.PREDICTION_LENGTH,
        min_context=cfg.MIN_CONTEXT_WEEKS,
        stride=cfg.TRAIN_STRIDE,
        max_windows=cfg.MAX_TRAIN_WINDOWS,
    )
    tsp = fit_group_scaler(panel, fit_end=split.fit_end, id_columns=cfg.ID_COLUMNS)
    mean, scale, _ = scaler_arrays(tsp, panel.keys)
    scaled = (panel.values - mean[:, None]) / scale[:, None]
    clock.lap("preprocess")
    model = build_model(  # 4
        cfg.PRETRAINED_MODEL,
        context_length=cfg.CONTEXT_LENGTH,
        prediction_length=cfg.PREDICTION_LENGTH,
        prefer_l1=cfg.PREFER_L1_LOSS,
        num_channels=len(cfg.TARGET_COLUMNS),
    )
    zero_shot = copy.deepcopy(model)  # the same pretrained weights, kept untouched for the comparison
    trainable = unfreeze_only(model, cfg.TRAINABLE_LAYERS)
    token = freq_token_for(model)
    datasets = {
        k: WindowDataset(
            scaled,
            panel.start,
            getattr(split, k),
            context=model.config.context_length,
            horizon=cfg.PREDICTION_LENGTH,
            freq_token=token,
        )
        for k in ("train", "valid", "test")
    }
    trainer = make_trainer(  # 5
        model,
        datasets["train"],
        datasets["valid"],
        out_dir=results,
        run_name=Path(cfg.DATA_PATH).stem,
        lr=cfg.LEARNING_RATE,
        weight_decay=cfg.WEIGHT_DECAY,
        epochs=cfg.NUM_TRAIN_EPOCHS,
        batch_size=cfg.BATCH_SIZE,
        patience=cfg.EARLY_STOPPING_PATIENCE,
        seed=cfg.SEED,
        workers=cfg.NUM_WORKERS,
        use_cpu=cfg.USE_CPU,
    )
    logger.info(
        "Training on %s: %d windows/epoch, batch %d, lr %g, up to %d epochs",
        trainer.args.device,
        len(datasets["train"]),
        cfg.BATCH_SIZE,
        cfg.LEARNING_RATE,
        cfg.NUM_TRAIN_EPOCHS,
    )
    checkpoint = resume_checkpoint(results, _fingerprint(vars(cfg), panel), cfg.FRESH_START)
    clock.lap("model")
    pretrained_loss = trainer.evaluate()["eval_loss"]
    train_out = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.remove_callback(EarlyStoppingCallback)
    zero_shot.to(trainer.args.device)
    if trainer.state.best_metric is not None and trainer.state.best_metric >= pretrained_loss:
        logger.warning(
            "Fine-tuning did not beat the pretrained model on validation (best eval_loss %.4f vs %.4f); "
            "keeping the pretrained weights",
            trainer.state.best_metric,
            pretrained_loss,
        )
        trainer.model = model = zero_shot
    test_loss = trainer.evaluate(datasets["test"], metric_key_prefix="test")["test_loss"]
    epochs = trainer.state.epoch
    clock.lap("train")
    logger.info(
        "Test loss %.4f (%s, scaled units) after %.0f epochs, %.0f s; pretrained validation loss %.4f, best %.4f",
        test_loss,
        model.config.loss,
        epochs,
        train_out.metrics["train_runtime"],
        pretrained_loss,
        trainer.state.best_metric,
    )
    valid_pred = forecast_scaled(model, scaled, panel.start, split.valid, horizon=cfg.PREDICTION_LENGTH)
    valid_true = gather_windows(scaled, panel.start, *split.valid, context=0, horizon=cfg.PREDICTION_LENGTH)
    conformal = fit_intervals(valid_true["future_values"].numpy(), valid_pred, cfg.INTERVAL_LEVEL)
    point, lower, upper = predict_with_intervals(
        model, scaled, panel, split.test, mean, scale, conformal, cfg.PREDICTION_LENGTH
    )
    methods = {
        "fine_tuned": point,
        "zero_shot": unscale(
            forecast_scaled(zero_shot, scaled, panel.start, split.test, horizon=cfg.PREDICTION_LENGTH),
            mean[split.test[0]],
            scale[split.test[0]],
        ),
        **baseline_forecasts(panel.values, panel.start, split.test, cfg.PREDICTION_LENGTH),
    }
    per_series, overall = evaluate_methods(panel, split, methods)
    metrics = {
        "test_loss": test_loss,
        "epochs": epochs,
        "train_runtime_s": train_out.metrics["train_runtime"],
        "train_windows_per_s": len(datasets["train"]) * epochs / train_out.metrics["train_runtime"],
        "trainable_fraction": trainable,
        "n_series": len(panel.keys),
        "n_test_series": len(split.test[0]),
        "test_window_start": str(panel.dates[split.test_start].date()),
        "metrics": overall,
    }
    if conformal is not None:
        y_test = panel.values[split.test[0][:, None], split.test_start + np.arange(cfg.PREDICTION_LENGTH)]
        coverage = ((y_test >= lower) & (y_test <= upper)).mean(axis=(0, 1))
        metrics["interval_level"] = cfg.INTERVAL_LEVEL
        metrics["interval_coverage"] = dict(zip(panel.targets, map(float, coverage)))
    report_metrics(per_series, metrics, results, trainer)
    clock.lap("evaluate")

    future = forecast_future(
        model,
        scaled,
        panel,
        mean,
        scale,
        conformal,
        cfg.PREDICTION_LENGTH,
        date_column=cfg.DATE_COLUMN,
        new_series=np.zeros(len(panel.keys), bool),
    )
    write_forecasts(future, results / "previsoes.csv", date_column=cfg.DATE_COLUMN)
    metrics["forecast_series_per_s"] = len(panel.keys) / clock.lap("forecast")
    logger.info(
        "Wrote %s: %d series x %d weeks from %s",
        results / "previsoes.csv",
        len(panel.keys),
        cfg.PREDICTION_LENGTH,
        future[cfg.DATE_COLUMN].min().date(),
    )
    plot_results(
        panel,
        future,
        overall,
        results / "plots",
        top_n=cfg.PLOT_TOP_SERIES,
        date_column=cfg.DATE_COLUMN,
        level=cfg.INTERVAL_LEVEL,
    )
    settings = {**vars(cfg), "WEEK_ANCHOR": anchor, "model_context_length": model.config.context_length}
    clock.lap("plots")
    save_artifacts(model, tsp, conformal, settings, final_dir)
    clock.lap("save")
    metrics["phase_seconds"] = clock.seconds
    logger.info("Done in %s", clock)
    return metrics


def report_metrics(per_series: pd.DataFrame, metrics: dict, results: Path, trainer: Trainer) -> None:
    """Write metricas_por_serie.csv and metricas.json, log a short table, add the figures to TensorBoard."""
    per_series.to_csv(results / "metricas_por_serie.csv", index=False)
    (results / "metricas.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(trainer.args.logging_dir)
    lines = [f"{'target':<12} {'method':<15} {'WAPE':>7} {'MASE':>7} {'MAE':>10} {'bias':>7}"]
    for target, by_method in metrics["metrics"].items():
        for method, m in by_method.items():
            lines.append(
                f"{target:<12} {method:<15} {m['wape']:>7.3f} {m['mase']:>7.3f} {m['mae']:>10.2f} {m['bias']:>+7.3f}"
            )
            for name, value in m.items():
                writer.add_scalar(f"test/{target}/{method}/{name}", value, int(trainer.state.global_step))
    writer.close()
    coverage = metrics.get("interval_coverage")
    logger.info(
        "Test window from %s, %d series (original units, forecasts clipped at 0):\n%s%s",
        metrics["test_window_start"],
        metrics["n_test_series"],
        "\n".join(lines),
        f"\n{100 * metrics['interval_level']:.0f}% interval coverage: {coverage}" if coverage else "",
    )


def run_predict(cfg) -> dict:
    """Forecast new data with FINAL_MODEL_DIR, without training."""
    results, clock = Path(cfg.RESULTS_DIR), PhaseClock()
    check_output_dirs([results], 1)
    model, tsp, conformal, saved = load_artifacts(Path(cfg.FINAL_MODEL_DIR))
    clock.lap("load model")
    ids, targets = tuple(saved["ID_COLUMNS"]), tuple(saved["TARGET_COLUMNS"])
    sales = read_sales_csv(cfg.DATA_PATH, date_column=saved["DATE_COLUMN"], id_columns=ids, target_columns=targets)
    clock.lap("read")
    panel, _ = resample_weekly(
        sales,
        date_column=saved["DATE_COLUMN"],
        id_columns=ids,
        target_columns=targets,
        anchor=saved["WEEK_ANCHOR"],
        source=cfg.DATA_PATH,
    )
    mean, scale, known = scaler_arrays(tsp, panel.keys)
    if not known.all():
        new = np.flatnonzero(~known)
        sub = replace(panel, keys=panel.keys.iloc[new], values=panel.values[new], start=panel.start[new])
        own = fit_group_scaler(sub, fit_end=np.full(len(new), len(panel.dates)), id_columns=ids)
        mean[new], scale[new], _ = scaler_arrays(own, sub.keys)
        logger.warning(
            "%d series were not in training; scaled on their own history and flagged new_series: %s",
            len(new),
            sub.keys.head(10).to_dict("records"),
        )
    scaled = (panel.values - mean[:, None]) / scale[:, None]
    horizon = int(saved["PREDICTION_LENGTH"])
    clock.lap("preprocess")
    future = forecast_future(
        model, scaled, panel, mean, scale, conformal, horizon, date_column=saved["DATE_COLUMN"], new_series=~known
    )
    clock.lap("forecast")
    write_forecasts(future, results / "previsoes.csv", date_column=saved["DATE_COLUMN"])
    clock.lap("write")
    logger.info(
        "Wrote %s: %d series x %d weeks (%d new series)",
        results / "previsoes.csv",
        len(panel.keys),
        horizon,
        (~known).sum(),
    )
    logger.info("Done in %s", clock)
    return {"n_series": len(panel.keys), "n_new_series": int((~known).sum()), "phase_seconds": clock.seconds}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the pipeline; return its metrics. Input errors end the process with one line (traceback with DEBUG)."""
    try:
        cfg = config.resolve(sys.argv[1:] if argv is None else argv, os.environ)
    except (ValueError, FileNotFoundError) as err:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logger.error("%s", err)
        raise SystemExit(2) from None
    logging.basicConfig(level=cfg.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logger.info("Settings: %s", json.dumps(vars(cfg), default=str))
    set_seed(cfg.SEED)
    try:
        return run_predict(cfg) if cfg.MODE == "predict" else run_train(cfg)
    except (InputError, FileNotFoundError) as err:
        if cfg.DEBUG:
            raise
        logger.error("%s", err)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
