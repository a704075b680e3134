"""Origins and splits (every series, no leakage), window cuts, and windows equal to ForecastDFDataset."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HORIZON, IDS, TARGETS, weekly
from tsfm_public import ForecastDFDataset

from sales_forecast.sales_csv import InputError
from sales_forecast.settings import BacktestSettings
from sales_forecast.windows import (
    WindowDataset,
    backtest_splits,
    collate_windows,
    future_windows,
    gather_windows,
    refit_windows,
    sample_windows,
    split_by_time,
)


def _split(panel, stride=1, horizon=HORIZON):
    return split_by_time(panel, end=len(panel.dates), horizon=horizon, min_context=8, stride=stride)


def test_split_no_leakage_and_every_combination(panel_df):
    panel, _ = weekly(panel_df)
    split = _split(panel)
    n = len(panel.keys)
    assert split.test_start == len(panel.dates) - HORIZON and split.valid_start == split.test_start - HORIZON
    assert split.train[1].max() == split.valid_start - 1  # the latest training window ends right before validation
    batch = gather_windows(panel.values, panel.start, *split.train, context=30, horizon=HORIZON, target_end=41)
    weeks = split.train[1][:, None] + np.arange(HORIZON)
    mask = batch["future_observed_mask"][..., 0].numpy()
    np.testing.assert_array_equal(mask, weeks < 41)  # target weeks from target_end on are masked ...
    assert (batch["future_values"].numpy()[~mask] == 0).all()  # ... and never read
    assert (split.valid[1] + HORIZON <= split.test_start).all()
    for part in (split.train, split.valid, split.test):
        assert set(part[0]) == set(range(n))  # every product-UF in every split
    assert (split.fit_end == split.valid_start).all()


def test_backtest_origins_and_new_series_and_short_calendar(panel_df, caplog):
    new = panel_df[panel_df["produto_cat"] == "001"].tail(20).assign(produto_cat="NEW")
    panel, _ = weekly(pd.concat([panel_df, new]))
    splits = backtest_splits(panel, backtest=BacktestSettings(3, 5, 8, 1), horizon=HORIZON)
    assert [s.end for s in splits] == [70, 75, 80] and [s.test_start for s in splits] == [62, 67, 72]
    new_idx = int(np.flatnonzero(panel.keys["produto_cat"] == "NEW")[0])
    assert new_idx in splits[-1].test[0] and new_idx not in splits[-1].train[0]
    assert "too new" in caplog.text and "NEW" in caplog.text
    late = backtest_splits(panel, backtest=BacktestSettings(11, 8, 8, 1), horizon=HORIZON)
    assert [s.end for s in late] == [16, 24, 32, 40, 48, 56, 64, 72, 80] and "only the last 9 origin(s)" in caplog.text
    assert len(late[0].train[0]) == len(late[0].valid[0]) == 0 and len(late[0].test[0]) == len(panel.keys) - 1
    with pytest.raises(InputError, match=r"data cover 80 weeks; training needs at least 87"):
        backtest_splits(panel, backtest=BacktestSettings(1, 0, 6, 1), horizon=40)


def test_a_series_whose_data_gap_is_open_at_an_origin_or_inside_its_window_is_not_scored_there(panel_df, caplog):
    panel, _ = weekly(panel_df)  # 80 weeks; origins of BacktestSettings(3, 5, 8, 1): test starts 62, 67, 72
    gap = np.zeros(panel.values.shape[:2], bool)
    gap[0, 50:63] = True  # open at the first origin's test start (62) and in the second's validation (59..66)
    with caplog.at_level("INFO"):
        splits = backtest_splits(dataclasses.replace(panel, gap=gap), backtest=BacktestSettings(3, 5, 8, 1), horizon=8)
    assert [0 in split.test[0] for split in splits] == [False, True, True]
    assert [0 in split.valid[0] for split in splits] == [False, False, True]
    assert all(0 in split.train[0] for split in splits)  # trained on: its weeks before the gap are data
    assert caplog.text.count("test 5 series") == 1 and "1 series with a data gap there not scored" in caplog.text


def test_stride_keeps_latest_window(panel_df):
    panel, _ = weekly(panel_df)
    full, sparse = _split(panel), _split(panel, stride=4)
    assert len(sparse.train[0]) == pytest.approx(len(full.train[0]) / 4, abs=len(panel.keys))
    assert sparse.train[1].max() == full.train[1].max() == full.valid_start - 1


def test_refit_trains_on_every_week(panel_df):
    panel, _ = weekly(panel_df)
    series, cuts = refit_windows(panel, min_context=8, stride=1)
    n_weeks = len(panel.dates)
    assert cuts.max() == n_weeks - 1 and set(series) == set(range(len(panel.keys)))
    batch = gather_windows(panel.values, panel.start, series, cuts, context=30, horizon=HORIZON, target_end=n_weeks)
    target_weeks = (cuts[:, None] + np.arange(HORIZON))[batch["future_observed_mask"][..., 0].numpy()]
    assert set(target_weeks) == set(range(8, n_weeks))  # every week after the first context is a target


def test_windows_equal_forecastdfdataset(panel_df):
    panel, _ = weekly(panel_df)
    context = 20
    series = np.zeros(80 - context - HORIZON + 1, dtype=int)
    ours = WindowDataset(
        panel.values,
        panel.start,
        (series, np.arange(context, 80 - HORIZON + 1)),
        context=context,
        horizon=HORIZON,
        freq_token=9,
    )
    one = panel_df[(panel_df["produto_cat"] == "001") & (panel_df["uf_cat"] == "RJ")]
    theirs = ForecastDFDataset(
        one,
        timestamp_column="date",
        id_columns=list(IDS),
        target_columns=list(TARGETS),
        context_length=context,
        prediction_length=HORIZON,
        frequency_token=9,
    )
    assert len(ours) == len(theirs)
    for i in (0, 17, len(ours) - 1):
        for key in ("past_values", "future_values", "past_observed_mask", "freq_token"):
            torch.testing.assert_close(ours[i][key].float(), theirs[i][key].float())


def test_batched_fetch_equals_per_window_items(panel_df):
    """The DataLoader's one-gather batches (__getitems__ + collate_windows) hold what per-item fetching gives."""
    panel, _ = weekly(panel_df)
    split = _split(panel)
    ds = WindowDataset(panel.values, panel.start, split.train, context=30, horizon=HORIZON, freq_token=9)

    def sampler():
        return torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(3))

    loader = torch.utils.data.DataLoader(ds, batch_size=7, sampler=sampler(), collate_fn=collate_windows)
    order = list(sampler())
    batches = list(loader)
    assert len(batches) == -(-len(ds) // 7)
    for b in (0, len(batches) - 1):
        expected = torch.utils.data.default_collate([ds[i] for i in order[7 * b : 7 * b + 7]])
        assert batches[b].keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(batches[b][key], expected[key])


def test_windows_are_cut_on_the_datasets_device(panel_df):
    """GATHER_ON_GPU: every tensor of a batch is made on the dataset's device (a GPU in use; here the meta device,
    where a tensor left on the CPU raises), with the CPU batch's shapes and dtypes. Drivers and categories too."""
    panel, _ = weekly(panel_df)
    split = _split(panel)
    n = len(panel.keys)
    extra = {"drivers": np.ones((n, len(panel.dates) + HORIZON, 2)), "categories": np.zeros((n, 1), np.int64)}
    kw = {"context": 30, "horizon": HORIZON, "freq_token": 9, "target_end": split.train[1], **extra}
    cpu = WindowDataset(panel.values, panel.start, split.train, **kw).__getitems__([0, 5, 9])
    meta = WindowDataset(panel.values, panel.start, split.train, **kw, device=torch.device("meta"))
    batch = meta.__getitems__([0, 5, 9])
    assert batch.keys() == cpu.keys() and len(batch) == 6
    for key, tensor in batch.items():
        assert (tensor.device.type, tensor.shape, tensor.dtype) == ("meta", cpu[key].shape, cpu[key].dtype), key


def test_padding_is_masked():
    values = np.arange(1, 11, dtype=float).reshape(1, 10, 1)
    batch = gather_windows(values, np.array([4]), np.array([0]), np.array([7]), context=6, horizon=3)
    np.testing.assert_array_equal(batch["past_values"][0, :, 0], [0, 0, 0, 5, 6, 7])
    np.testing.assert_array_equal(batch["past_observed_mask"][0, :, 0], [False] * 3 + [True] * 3)
    np.testing.assert_array_equal(batch["future_values"][0, :, 0], [8, 9, 10])


def test_future_window_is_cut_after_each_series_last_week(panel_df):
    panel, _ = weekly(panel_df)
    series, cuts = future_windows(panel)
    assert list(series) == list(range(len(panel.keys))) and (cuts == len(panel.dates)).all()


def test_validation_sample_is_fixed_and_bounded():
    windows = (np.arange(100), np.full(100, 50))
    first, again = sample_windows(windows, 30, seed=3), sample_windows(windows, 30, seed=3)
    assert len(first[0]) == 30 and len(set(first[0])) == 30 and (np.diff(first[0]) > 0).all()
    np.testing.assert_array_equal(first[0], again[0])  # the same windows every epoch and every run
    assert sample_windows(windows, 0, seed=3) is windows and sample_windows(windows, 100, seed=3) is windows
