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

import copy
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
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from tsfm_public import TimeSeriesPreprocessor
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor
from tsfm_public.toolkit.get_model import get_model
from tsfm_public.toolkit.time_series_preprocessor import DEFAULT_FREQUENCY_MAPPING
from tsfm_public.toolkit.util import count_parameters

import config
from evaluation import baseline_forecasts, evaluate_methods, mase_scale, metric_table, plot_results, write_metrics
from sales_csv import InputError, read_sales_csv, write_forecasts

logger = logging.getLogger("ttm_model")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
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
) -> pd.DataFrame:
    """A realistic weekly panel: trend, yearly season, promotions, a drifting price, new and intermittent series.

    Named as the settings ask: 1 id column (product-UF), 2 (product, UF) or 3 (product, UF, channel); targets in
    order units, revenue, then revenue x 0.3 (a margin) for any further target.
    """
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
            ids = (
                [f"P{p + 1:03d}-{uf}"],
                [f"P{p + 1:03d}", uf],
                [f"P{p + 1:03d}", uf, ("loja", "online")[(p + u) % 2]],
            )
            revenue = np.round(units[start:] * price[start:], 2)
            targets = [units[start:], revenue] + [np.round(revenue * 0.3, 2)] * (len(target_columns) - 2)
            frames.append(
                pd.DataFrame(
                    {
                        date_column: dates[start:],
                        **dict(zip(id_columns, ids[len(id_columns) - 1])),
                        **dict(zip(target_columns, targets)),
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)
    keep = (df[target_columns[0]] > 0) | (rng.random(len(df)) < 0.5)  # exports often omit weeks without sales
    return df[keep].reset_index(drop=True)


def load_sales(
    path: str, *, date_column: str, id_columns: tuple, target_columns: tuple, seed: int, synthetic_dir: Path | None
) -> pd.DataFrame:
    """The user's CSV; with synthetic_dir given and no file at path, a synthetic panel saved there for inspection."""
    if synthetic_dir is None or Path(path).exists():
        return read_sales_csv(path, date_column=date_column, id_columns=id_columns, target_columns=target_columns)
    sales = synthesize_sales(seed=seed, date_column=date_column, id_columns=id_columns, target_columns=target_columns)
    sales.to_csv(synthetic_dir / "dados_sinteticos.csv", index=False)
    logger.warning(
        "SYNTHETIC DATA: %s not found, so training on a synthetic panel (%d rows, %d series), saved "
        "to %s. Put your CSV at %s or set --DATA_PATH.",
        path,
        len(sales),
        sales.groupby(list(id_columns)).ngroups,
        synthetic_dir / "dados_sinteticos.csv",
        path,
    )
    return sales


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


def fit_group_scaler(panel: Panel, *, fit_end: np.ndarray) -> TimeSeriesPreprocessor:
    """Fit granite-tsfm's per product-UF standard scaler on each series' weeks before fit_end[s]."""
    t = np.arange(len(panel.dates))
    rows_s, rows_t = np.nonzero((t >= panel.start[:, None]) & (t < fit_end[:, None]))
    frame = panel.keys.iloc[rows_s].reset_index(drop=True)
    frame["date"] = panel.dates[rows_t]
    frame[list(panel.targets)] = panel.values[rows_s, rows_t]
    tsp = TimeSeriesPreprocessor(
        timestamp_column="date",
        id_columns=list(panel.keys.columns),
        target_columns=list(panel.targets),
        scaling=True,
        scaler_type="standard",
        freq="W",
        encode_categorical=False,
    )
    return tsp.train(frame)


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


def panel_scaling(tsp: TimeSeriesPreprocessor, panel: Panel) -> Scaling:
    """The fitted scalers of the panel's series; a series the preprocessor does not know gets its own history's."""
    n = len(tsp.target_columns)
    mean, scale, known = np.zeros((len(panel.keys), n)), np.ones((len(panel.keys), n)), np.zeros(len(panel.keys), bool)
    for i, key in enumerate(panel.keys.itertuples(index=False, name=None)):
        scaler = tsp.target_scaler_dict.get(key if len(key) > 1 else key[0])
        if scaler is not None:
            mean[i], scale[i], known[i] = scaler.mean_, scaler.scale_, True
    if not known.all():
        new = np.flatnonzero(~known)
        sub = Panel(panel.keys.iloc[new], panel.dates, panel.values[new], panel.start[new], panel.targets)
        own = panel_scaling(fit_group_scaler(sub, fit_end=np.full(len(new), len(panel.dates))), sub)
        mean[new], scale[new] = own.mean, own.scale
    return Scaling(mean, scale, known)


@dataclass(frozen=True)
class ScaledPanel:
    """The weekly panel, its scaling and the scaled values the model reads."""

    panel: Panel
    scaling: Scaling
    values: np.ndarray  # scaling.apply(panel.values)


def scale_panel(panel: Panel, tsp: TimeSeriesPreprocessor) -> ScaledPanel:
    """The panel in the scaled units of the fitted preprocessor (unknown series: their own history)."""
    scaling = panel_scaling(tsp, panel)
    return ScaledPanel(panel, scaling, scaling.apply(panel.values))


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
    if not local.exists():
        check_hub(model_path)
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


def steps_per_epoch(n_windows: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch, as OneCycleLR must know them."""
    return math.ceil(n_windows / (batch_size * grad_accum))


def window_datasets(
    data: ScaledPanel, windows: dict[str, tuple[np.ndarray, np.ndarray]], *, model: torch.nn.Module, horizon: int
) -> dict[str, WindowDataset]:
    """One WindowDataset per named set of window cuts, shaped for the model (its context and frequency token)."""
    return {
        name: WindowDataset(
            data.values,
            data.panel.start,
            cuts,
            context=model.config.context_length,
            horizon=horizon,
            freq_token=freq_token_for(model),
        )
        for name, cuts in windows.items()
    }


@dataclass(frozen=True)
class TrainSettings:
    """Section 5 of config.py, as the HF Trainer is given it."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    patience: int
    seed: int
    workers: int
    use_cpu: bool

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
        )


def make_trainer(
    model: torch.nn.Module,
    datasets: dict[str, WindowDataset],
    *,
    out_dir: Path,
    run_name: str,
    settings: TrainSettings,
) -> Trainer:
    """HF Trainer on datasets "train" and "valid": AdamW over trainable parameters, OneCycleLR, early stopping on
    eval_loss, TensorBoard logs."""
    train = datasets["train"]
    lr, batch_size, epochs, use_cpu = settings.lr, settings.batch_size, settings.epochs, settings.use_cpu
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
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=settings.workers,
        use_cpu=use_cpu,
        label_names=["future_values"],
        remove_unused_columns=False,  # batches come whole from WindowDataset.__getitems__
        prediction_loss_only=True,
        save_safetensors=True,
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_pin_memory=torch.cuda.is_available() and not use_cpu,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=datasets["valid"],
        optimizers=(optimizer, scheduler),
        data_collator=collate_windows,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.patience)],
    )


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
    digest.update(pd.util.hash_pandas_object(panel.keys, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fine_tune(trainer: Trainer, zero_shot: torch.nn.Module, *, checkpoint: str | None) -> tuple[torch.nn.Module, dict]:
    """Train with early stopping, keeping the pretrained weights when validation did not improve on them.

    Returns the model to use and the training figures for metricas.json.
    """
    pretrained_loss = trainer.evaluate()["eval_loss"]
    out = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.remove_callback(EarlyStoppingCallback)
    zero_shot.to(trainer.args.device)
    if trainer.state.best_metric is not None and trainer.state.best_metric >= pretrained_loss:
        logger.warning(
            "Fine-tuning did not beat the pretrained model on validation (best eval_loss %.4f vs %.4f); "
            "keeping the pretrained weights",
            trainer.state.best_metric,
            pretrained_loss,
        )
        trainer.model = zero_shot
    runtime, epochs = out.metrics["train_runtime"], trainer.state.epoch
    logger.info(
        "Trained %.0f epochs in %.0f s; validation loss (%s, scaled units) pretrained %.4f, best %.4f",
        epochs,
        runtime,
        trainer.model.config.loss,
        pretrained_loss,
        trainer.state.best_metric,
    )
    return trainer.model, {
        "epochs": epochs,
        "train_runtime_s": runtime,
        "train_windows_per_s": len(trainer.train_dataset) * epochs / runtime,
    }


# ---- 6. evaluation ------------------------------------------------------------------------------------------------


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


def predict_with_intervals(
    model: torch.nn.Module,
    data: ScaledPanel,
    windows: tuple[np.ndarray, np.ndarray],
    conformal: PostHocProbabilisticProcessor | None,
    *,
    horizon: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Point forecast and interval bounds (None without conformal) in original units for the given windows."""
    pred = forecast_scaled(model, data.values, data.panel.start, windows, horizon=horizon)
    if conformal is None:
        return data.scaling.invert(pred, windows[0]), None, None
    bounds = conformal.predict(pred.astype(np.float64))
    return tuple(data.scaling.invert(p, windows[0]) for p in (pred, bounds[..., 0], bounds[..., 1]))


def evaluate_on_test(
    trainer: Trainer, zero_shot: torch.nn.Module, data: ScaledPanel, split: Split, *, horizon: int, level: float
) -> tuple[pd.DataFrame, dict, PostHocProbabilisticProcessor | None]:
    """Intervals calibrated on validation; the trained model, zero-shot and baselines scored on the test window.

    Returns the per-series metrics, the figures for metricas.json and the intervals.
    """
    model, panel, (series, cuts) = trainer.model, data.panel, split.test
    test = window_datasets(data, {"test": split.test}, model=model, horizon=horizon)["test"]
    test_loss = trainer.evaluate(test, metric_key_prefix="test")["test_loss"]
    valid_pred = forecast_scaled(model, data.values, panel.start, split.valid, horizon=horizon)
    valid_true = gather_windows(data.values, panel.start, *split.valid, context=0, horizon=horizon)
    conformal = fit_intervals(valid_true["future_values"].numpy(), valid_pred, level)
    point, lower, upper = predict_with_intervals(model, data, split.test, conformal, horizon=horizon)
    zero_shot_pred = forecast_scaled(zero_shot, data.values, panel.start, split.test, horizon=horizon)
    methods = {
        "fine_tuned": point,
        "zero_shot": data.scaling.invert(zero_shot_pred, series),
        **baseline_forecasts(panel.values, panel.start, split.test, horizon),
    }
    y = panel.values[series[:, None], cuts[:, None] + np.arange(horizon)]
    scale = mase_scale(panel.values, panel.start, split.test_start)[series]
    per_series, overall = evaluate_methods(
        y, methods, scale=scale, keys=panel.keys.iloc[series], targets=panel.targets
    )
    figures = {
        "test_loss": test_loss,
        "n_test_series": len(series),
        "test_window_start": str(panel.dates[split.test_start].date()),
        "metrics": overall,
    }
    coverage = ""
    if conformal is not None:
        inside = ((y >= lower) & (y <= upper)).mean(axis=(0, 1))
        figures["interval_level"], figures["interval_coverage"] = level, dict(zip(panel.targets, map(float, inside)))
        coverage = f"\n{100 * level:.0f}% interval coverage: {figures['interval_coverage']}"
    logger.info(
        "Test loss %.4f (%s, scaled units). Test window from %s, %d series (original units, forecasts clipped at 0):"
        "\n%s%s",
        test_loss,
        model.config.loss,
        figures["test_window_start"],
        len(series),
        metric_table(overall),
        coverage,
    )
    return per_series, figures, conformal


# ---- 7. forecast --------------------------------------------------------------------------------------------------


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
    data: ScaledPanel,
    conformal: PostHocProbabilisticProcessor | None,
    *,
    horizon: int,
    date_column: str,
) -> pd.DataFrame:
    """previsoes.csv rows: every series forecast from its last week (point and bounds, original units); series the
    scaler did not know are flagged new_series."""
    panel = data.panel
    windows = (np.arange(len(panel.keys)), np.full(len(panel.keys), len(panel.dates)))
    forecasts = predict_with_intervals(model, data, windows, conformal, horizon=horizon)
    return forecast_frame(panel, *forecasts, date_column=date_column, new_series=~data.scaling.known)


# ---- 8. save ------------------------------------------------------------------------------------------------------


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


# ---- the run ------------------------------------------------------------------------------------------------------


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


def run_train(cfg: SimpleNamespace) -> dict:
    """The training run, one named call per section; returns the metrics also written to metricas.json."""
    results, final_dir, clock = Path(cfg.RESULTS_DIR), Path(cfg.FINAL_MODEL_DIR), PhaseClock()
    check_output_dirs([results, final_dir.resolve().parent], cfg.MIN_FREE_DISK_MB)
    columns = {"date_column": cfg.DATE_COLUMN, "id_columns": cfg.ID_COLUMNS, "target_columns": cfg.TARGET_COLUMNS}
    synthetic_dir = results if cfg.DATA_PATH == config.DATA_PATH else None  # only the default path may be absent
    sales = load_sales(cfg.DATA_PATH, **columns, seed=cfg.SEED, synthetic_dir=synthetic_dir)  # 1
    clock.lap("load")
    panel, anchor = resample_weekly(sales, **columns, anchor=cfg.WEEK_ANCHOR, source=cfg.DATA_PATH)  # 2
    split = split_by_time(  # 3
        panel,
        horizon=cfg.PREDICTION_LENGTH,
        min_context=cfg.MIN_CONTEXT_WEEKS,
        stride=cfg.TRAIN_STRIDE,
        max_windows=cfg.MAX_TRAIN_WINDOWS,
    )
    tsp = fit_group_scaler(panel, fit_end=split.fit_end)  # 2, on the training weeks the split leaves
    data = scale_panel(panel, tsp)
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
    datasets = window_datasets(
        data, {"train": split.train, "valid": split.valid}, model=model, horizon=cfg.PREDICTION_LENGTH
    )
    trainer = make_trainer(  # 5
        model, datasets, out_dir=results, run_name=Path(cfg.DATA_PATH).stem, settings=TrainSettings.from_config(cfg)
    )
    checkpoint = resume_checkpoint(results, run_fingerprint(vars(cfg), panel), cfg.FRESH_START)
    clock.lap("model")
    model, training = fine_tune(trainer, zero_shot, checkpoint=checkpoint)
    clock.lap("train")
    per_series, evaluation, conformal = evaluate_on_test(  # 6
        trainer, zero_shot, data, split, horizon=cfg.PREDICTION_LENGTH, level=cfg.INTERVAL_LEVEL
    )
    clock.lap("evaluate")
    future = forecast_future(model, data, conformal, horizon=cfg.PREDICTION_LENGTH, date_column=cfg.DATE_COLUMN)  # 7
    write_forecasts(future, results / "previsoes.csv", date_column=cfg.DATE_COLUMN)
    forecast_rate = len(panel.keys) / clock.lap("forecast")
    plot_results(  # 8
        panel, future, evaluation["metrics"], results / "plots", top_n=cfg.PLOT_TOP_SERIES, level=cfg.INTERVAL_LEVEL
    )
    clock.lap("plots")
    settings = {**vars(cfg), "WEEK_ANCHOR": anchor, "model_context_length": model.config.context_length}
    save_artifacts(model, tsp, conformal, settings, final_dir)
    clock.lap("save")
    metrics = {**training, "trainable_fraction": trainable, "n_series": len(panel.keys), **evaluation}
    metrics |= {"forecast_series_per_s": forecast_rate, "phase_seconds": clock.seconds}
    write_metrics(metrics, per_series, results, logging_dir=trainer.args.logging_dir, step=trainer.state.global_step)
    logger.info("Done in %s", clock)
    return metrics


def run_predict(cfg: SimpleNamespace) -> dict:
    """Forecast new data with FINAL_MODEL_DIR, without training."""
    results, clock = Path(cfg.RESULTS_DIR), PhaseClock()
    check_output_dirs([results], 1)
    model, tsp, conformal, saved = load_artifacts(Path(cfg.FINAL_MODEL_DIR))
    clock.lap("load model")
    date_column, ids, targets = saved["DATE_COLUMN"], tuple(saved["ID_COLUMNS"]), tuple(saved["TARGET_COLUMNS"])
    sales = read_sales_csv(cfg.DATA_PATH, date_column=date_column, id_columns=ids, target_columns=targets)
    clock.lap("read")
    panel, _ = resample_weekly(
        sales,
        date_column=date_column,
        id_columns=ids,
        target_columns=targets,
        anchor=saved["WEEK_ANCHOR"],
        source=cfg.DATA_PATH,
    )
    data = scale_panel(panel, tsp)
    new = ~data.scaling.known
    if new.any():
        logger.warning(
            "%d series were not in training; scaled on their own history and flagged new_series: %s",
            new.sum(),
            panel.keys[new].head(10).to_dict("records"),
        )
    clock.lap("preprocess")
    future = forecast_future(model, data, conformal, horizon=int(saved["PREDICTION_LENGTH"]), date_column=date_column)
    clock.lap("forecast")
    write_forecasts(future, results / "previsoes.csv", date_column=date_column)
    clock.lap("write")
    logger.info("Done in %s", clock)
    return {"n_series": len(panel.keys), "n_new_series": int(new.sum()), "phase_seconds": clock.seconds}


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
    logging.getLogger().setLevel(cfg.LOG_LEVEL)
    logger.info("Settings: %s", json.dumps(vars(cfg), default=str))
    set_seed(cfg.SEED)
    try:
        return run_predict(cfg) if cfg.MODE == "predict" else run_train(cfg)
    except (InputError, FileNotFoundError, torch.cuda.OutOfMemoryError) as err:
        if cfg.DEBUG:
            raise
        logger.error("%s", _one_line(err, cfg.BATCH_SIZE))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
