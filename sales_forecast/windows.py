"""Forecast origins, splits that keep every series and leak nothing, and the windows cut from the scaled panel."""

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sales_forecast.panel import Panel
from sales_forecast.sales_csv import InputError
from sales_forecast.scaling import ScaledPanel
from sales_forecast.settings import BacktestSettings

logger = logging.getLogger(__name__)

Windows = tuple[np.ndarray, np.ndarray]  # (series index, cut): a window at cut t reads weeks < t, forecasts t on


@dataclass(frozen=True)
class Split:
    """Window cuts of one forecast origin: a window at cut t reads weeks < t and forecasts weeks t .. t+horizon-1.

    The origin sees weeks < end only; its test window is the last `horizon` of them, validation the `horizon` before.
    """

    end: int
    valid_start: int
    test_start: int
    train: Windows  # targets from valid_start on are masked
    valid: Windows
    test: Windows
    fit_end: np.ndarray  # per series: scaler fitted on weeks before this (never test weeks of evaluated series)


def training_cuts(first_cut: np.ndarray, *, last: int, stride: int) -> Windows:
    """(series, cut) of windows every `stride` weeks back from cut `last` to each series' first_cut."""
    counts = np.where(first_cut <= last, (last - first_cut) // stride + 1, 0)
    series = np.repeat(np.arange(len(first_cut)), counts)
    cuts = last - stride * (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return series, cuts


def _gap_in(panel: Panel, start: int, end: int) -> np.ndarray:
    """Per series: a data gap (panel.gap) open at week `start` or inside weeks start..end-1 (from week 0 when
    start <= 0: an early origin's validation window starting before the calendar)."""
    return np.zeros(len(panel.keys), bool) if panel.gap is None else panel.gap[:, max(start - 1, 0) : end].any(1)


def split_by_time(panel: Panel, *, end: int, horizon: int, min_context: int, stride: int) -> Split:
    """Cut every series at the same dates for the origin whose test window ends at week `end`.

    Training windows start every `stride` weeks back from the week before validation; their target weeks from
    validation on are masked, so training learns from every week before validation and nothing after. A series whose
    data gap (panel.gap) is open at the validation or test start, or lies in that window, is not scored there: the
    origin sees the gap as weeks without rows, and the weeks to score are interpolated, not data.
    """
    test_start, valid_start = end - horizon, end - 2 * horizon
    series = np.arange(len(panel.keys))
    first_cut = panel.start + min_context
    in_test = (first_cut <= test_start) & ~_gap_in(panel, test_start, end)
    in_valid = (first_cut <= valid_start) & ~_gap_in(panel, valid_start, test_start)
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


def backtest_splits(panel: Panel, *, backtest: BacktestSettings, horizon: int) -> list[Split]:
    """Rolling forecast origins BACKTEST_STEP weeks apart (0: the horizon), the last test window ending at the data's
    last week.

    Raises:
        InputError: if the calendar is too short for even the last origin's training, validation and test weeks.
    """
    origins, min_context = backtest.backtest_origins, backtest.min_context_weeks
    step, n_weeks, need = backtest.backtest_step or horizon, len(panel.dates), min_context + 2 * horizon + 1
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
    splits = [
        split_by_time(panel, end=e, horizon=horizon, min_context=min_context, stride=backtest.train_stride)
        for e in ends
    ]
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
        gapped = _gap_in(panel, split.test_start, split.end).sum()
        logger.info(
            "Origin %s: train windows %d (targets before %s), valid %d series, test %d series (%s..%s)%s",
            panel.dates[split.test_start].date(),
            len(split.train[0]),
            panel.dates[split.valid_start].date(),
            len(split.valid[0]),
            len(split.test[0]),
            panel.dates[split.test_start].date(),
            panel.dates[split.end - 1].date(),
            f"; {gapped} series with a data gap there not scored" if gapped else "",
        )
    return splits


def refit_windows(panel: Panel, *, min_context: int, stride: int) -> Windows:
    """Training windows of the final model: every week is a target (the last weeks' windows partly masked)."""
    return training_cuts(panel.start + min_context, last=len(panel.dates) - 1, stride=stride)


def future_windows(panel: Panel) -> Windows:
    """One window per series, cut after its last week: the forecast of the weeks after the data."""
    return np.arange(len(panel.keys)), np.full(len(panel.keys), len(panel.dates))


def sample_windows(windows: Windows, n: int, seed: int) -> Windows:
    """At most n of the windows, the same random ones every epoch (n 0: all): bounds the validation cost per epoch on
    big panels (50,000 series: 50,000 windows scored per epoch against 1,500 trained) without changing small ones."""
    if not n or len(windows[0]) <= n:
        return windows
    keep = np.sort(np.random.default_rng(seed).choice(len(windows[0]), n, replace=False))
    logger.info(
        "Validation: a fixed random sample of %d of the %d series' windows (MAX_VALID_WINDOWS)", n, len(windows[0])
    )
    return windows[0][keep], windows[1][keep]


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
    """Forecast windows cut from one scaled array (no per-item pandas): what ForecastDFDataset (the twin; a test
    compares them) yields, plus masks.

    On a GPU device the panel lives there and each batch is cut there: no DataLoader workers, no copy per batch.
    """

    def __init__(
        self,
        scaled: np.ndarray,
        start: np.ndarray,
        windows: Windows,
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


def window_dataset(
    data: ScaledPanel,
    windows: Windows,
    *,
    context: int,
    freq_token: int | None,
    horizon: int,
    target_end: int | np.ndarray | None = None,
    device: torch.device = torch.device("cpu"),
) -> WindowDataset:
    """The WindowDataset of the windows of a scaled panel, its drivers and categories included, shaped for the model
    (its context and frequency token), its arrays on device; targets from target_end on are masked."""
    return WindowDataset(
        data.values,
        data.panel.start,
        windows,
        context=context,
        horizon=horizon,
        freq_token=freq_token,
        target_end=target_end,
        drivers=data.drivers,
        categories=data.categories,
        device=device,
    )
