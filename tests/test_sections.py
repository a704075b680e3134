"""Sections 2-4: weekly panel, split without leakage, scaler on train only, windows, trainable layers."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HORIZON, make_panel
from tsfm_public import ForecastDFDataset

from ttm_model import (
    InputError,
    WindowDataset,
    build_model,
    collate_windows,
    fit_group_scaler,
    gather_windows,
    panel_scaling,
    resample_weekly,
    scale_panel,
    split_by_time,
    steps_per_epoch,
    unfreeze_only,
)

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")


def _panel(df):
    return resample_weekly(df, date_column="date", id_columns=IDS, target_columns=TARGETS)


def test_resample_daily_sums_into_weeks_and_fills_gaps():
    days = pd.date_range("2024-01-01", periods=28, freq="D")  # Monday..Sunday x 4
    df = pd.DataFrame({"date": days, "produto_cat": "A", "uf_cat": "SP", "vendas": 1.0, "faturamento": 2.0})
    df = df[(df["date"] < "2024-01-08") | (df["date"] >= "2024-01-15")]  # week 2 missing entirely
    panel, anchor = _panel(df)
    assert anchor == "W-SUN"
    assert list(panel.dates.strftime("%Y-%m-%d")) == ["2024-01-07", "2024-01-14", "2024-01-21", "2024-01-28"]
    np.testing.assert_array_equal(panel.values[0, :, 0], [7, 0, 7, 7])


def test_weekly_input_keeps_its_weekday():
    df = make_panel(n_weeks=10)
    df["date"] = df["date"] + pd.Timedelta(days=3)  # Wednesdays
    panel, anchor = _panel(df)
    assert anchor == "W-WED" and (panel.dates.dayofweek == 2).all()
    np.testing.assert_allclose(panel.values.sum(), df[list(TARGETS)].to_numpy().sum())


@pytest.mark.parametrize("anchor", ["auto", "W-WED"])
def test_resample_equals_pandas_groupby_resample(anchor, caplog):
    """Messy daily rows (shuffled, duplicated, gaps, late starters) give pandas' groupby + resample sums."""
    rng = np.random.default_rng(1)
    days = pd.date_range("2023-01-03", periods=400, freq="D")
    rows = pd.DataFrame(
        {
            "date": rng.choice(days, 3000),
            "produto_cat": rng.choice(["10", "2", "B"], 3000),
            "uf_cat": rng.choice(["SP", "RJ", "MG", "BA"], 3000),
            "vendas": rng.integers(0, 9, 3000).astype(float),
            "faturamento": rng.random(3000) * 100,
        }
    )
    rows = rows[~((rows["produto_cat"] == "B") & (rows["date"] < "2023-09-01"))]  # a series that starts late
    panel, used = resample_weekly(rows, date_column="date", id_columns=IDS, target_columns=TARGETS, anchor=anchor)
    expected = rows.set_index("date").groupby(list(IDS))[list(TARGETS)].resample(used).sum().reset_index()
    assert "duplicate" in caplog.text and "out of date order" in caplog.text
    assert panel.keys.to_dict("records") == expected[list(IDS)].drop_duplicates().to_dict("records")
    for s, key in enumerate(panel.keys.itertuples(index=False)):
        one = expected[(expected["produto_cat"] == key.produto_cat) & (expected["uf_cat"] == key.uf_cat)]
        t = panel.dates.get_indexer(one["date"])
        assert (t >= 0).all() and panel.start[s] == t.min()
        np.testing.assert_allclose(panel.values[s, t], one[list(TARGETS)].to_numpy())
        np.testing.assert_array_equal(panel.values[s, : t.min()], 0)
    assert panel.values.sum(axis=(0, 1)) == pytest.approx(rows[list(TARGETS)].sum().to_numpy())


def test_split_no_leakage_and_every_combination(panel_df):
    panel, _ = _panel(panel_df)
    split = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1)
    n = len(panel.keys)
    assert split.test_start == len(panel.dates) - HORIZON and split.valid_start == split.test_start - HORIZON
    assert (split.train[1] + HORIZON <= split.valid_start).all()  # training targets end before validation
    assert (split.valid[1] + HORIZON <= split.test_start).all()
    for part in (split.train, split.valid, split.test):
        assert set(part[0]) == set(range(n))  # every product-UF in every split
    assert (split.fit_end == split.valid_start).all()


def test_split_lists_new_series_and_rejects_short_calendar(panel_df, caplog):
    new = panel_df[panel_df["produto_cat"] == "001"].tail(20).assign(produto_cat="NEW")
    panel, _ = _panel(pd.concat([panel_df, new]))
    split = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1)
    new_idx = int(np.flatnonzero(panel.keys["produto_cat"] == "NEW")[0])
    assert new_idx in split.test[0] and new_idx not in split.train[0]
    assert "too new" in caplog.text and "NEW" in caplog.text
    with pytest.raises(InputError, match=r"data cover 80 weeks; training needs at least 96"):
        split_by_time(panel, horizon=30, min_context=6, stride=1)


def test_stride_keeps_latest_window(panel_df):
    panel, _ = _panel(panel_df)
    full = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1)
    sparse = split_by_time(panel, horizon=HORIZON, min_context=8, stride=4)
    assert len(sparse.train[0]) == pytest.approx(len(full.train[0]) / 4, abs=len(panel.keys))
    assert sparse.train[1].max() == full.train[1].max() == full.valid_start - HORIZON
    capped = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1, max_windows=len(full.train[0]) // 5)
    assert len(full.train[0]) // 6 < len(capped.train[0]) <= len(full.train[0]) // 5
    assert capped.train[1].max() == full.valid_start - HORIZON and set(capped.train[0]) == set(full.train[0])
    one_each = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1, max_windows=2)  # fewer than series
    assert sorted(one_each.train[0]) == sorted(set(full.train[0]))
    assert (one_each.train[1] == full.valid_start - HORIZON).all()


def test_scaler_fitted_on_train_only(panel_df):
    panel, _ = _panel(panel_df)
    split = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1)
    before = panel_scaling(fit_group_scaler(panel, fit_end=split.fit_end), panel)
    changed = panel.values.copy()
    changed[:, split.valid_start :] *= 100  # validation and test weeks must not move the scaler
    panel2 = type(panel)(panel.keys, panel.dates, changed, panel.start, panel.targets)
    after = panel_scaling(fit_group_scaler(panel2, fit_end=split.fit_end), panel)
    np.testing.assert_allclose(before.mean, after.mean)
    np.testing.assert_allclose(before.scale, after.scale)
    train_part = panel.values[:, : split.valid_start]
    np.testing.assert_allclose(before.mean, train_part.mean(1))
    np.testing.assert_allclose(before.scale, train_part.std(1))


def test_vectorised_scaling_equals_tsp_and_round_trips(panel_df):
    panel, _ = _panel(panel_df)
    tsp = fit_group_scaler(panel, fit_end=np.full(len(panel.keys), 60))
    data = scale_panel(panel, tsp)
    assert data.scaling.known.all()
    ours, mean, scale = data.values, data.scaling.mean, data.scaling.scale
    long = panel_df.sort_values([*IDS, "date"]).reset_index(drop=True)
    theirs = tsp.preprocess(long).sort_values([*IDS, "date"])
    np.testing.assert_allclose(ours.reshape(-1, 2), theirs[list(TARGETS)].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours * scale[:, None] + mean[:, None], panel.values, atol=1e-9)


def test_windows_equal_forecastdfdataset(panel_df):
    panel, _ = _panel(panel_df)
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
    panel, _ = _panel(panel_df)
    split = split_by_time(panel, horizon=HORIZON, min_context=8, stride=1)
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


def test_padding_is_masked():
    values = np.arange(1, 11, dtype=float).reshape(1, 10, 1)
    batch = gather_windows(values, np.array([4]), np.array([0]), np.array([7]), context=6, horizon=3)
    np.testing.assert_array_equal(batch["past_values"][0, :, 0], [0, 0, 0, 5, 6, 7])
    np.testing.assert_array_equal(batch["past_observed_mask"][0, :, 0], [False] * 3 + [True] * 3)
    np.testing.assert_array_equal(batch["future_values"][0, :, 0], [8, 9, 10])


def test_only_named_layers_trainable(model_dir):
    model = build_model(model_dir, context_length=104, prediction_length=26, prefer_l1=True, num_channels=2)
    fraction = unfreeze_only(model, ("fc1", "fc2"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("fc1" in n or "fc2" in n for n in names)
    assert 0 < fraction < 1
    with pytest.raises(InputError, match=r"TRAINABLE_LAYERS=\['nope'\] matched no parameter"):
        unfreeze_only(model, ("nope",))
    unfreeze_only(model, ("decoder*fc1", "decoder*fc2"))  # a glob: fc1/fc2 of the decoder only
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("decoder.") and (".fc1." in n or ".fc2." in n) for n in names)


def test_model_errors_name_the_setting(model_dir):
    with pytest.raises(InputError, match=r"PRETRAINED_MODEL=./no/such/folder: folder not found"):
        build_model("./no/such/folder", context_length=104, prediction_length=26, prefer_l1=True, num_channels=2)
    with pytest.raises(InputError, match=r"reads 90 weeks, more than CONTEXT_LENGTH=52"):
        build_model(model_dir, context_length=52, prediction_length=26, prefer_l1=True, num_channels=2)


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 64) == 16
    assert steps_per_epoch(1024, 64) == 16
    assert steps_per_epoch(1025, 32, grad_accum=2) == 17


def test_unreachable_hub_fails_at_once(monkeypatch, tmp_path):
    import huggingface_hub
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(InputError, match=r"cannot be reached \(ConnectionError\).*--PRETRAINED_MODEL=/path/to/"):
        build_model(
            "ibm-granite/granite-timeseries-ttm-r2",
            context_length=104,
            prediction_length=26,
            prefer_l1=True,
            num_channels=2,
        )
