"""Sections 2-4: weekly panel, split without leakage, scaler on train only, windows, trainable layers."""

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HORIZON, make_panel
from tsfm_public import ForecastDFDataset
from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerGatedAttention

from ttm_model import (
    InputError,
    SeriesScalers,
    ShortAxisSoftmax,
    TrainSettings,
    WindowDataset,
    _scaler_frame,
    backtest_splits,
    build_model,
    collate_windows,
    fit_group_scaler,
    gather_windows,
    make_trainer,
    panel_scaling,
    refit_windows,
    resample_weekly,
    scale_panel,
    split_by_time,
    steps_per_epoch,
    unfreeze_only,
    window_datasets,
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


def _split(panel, stride=1, horizon=HORIZON):
    return split_by_time(panel, end=len(panel.dates), horizon=horizon, min_context=8, stride=stride)


def test_split_no_leakage_and_every_combination(panel_df):
    panel, _ = _panel(panel_df)
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
    panel, _ = _panel(pd.concat([panel_df, new]))
    settings = TrainSettings(
        1e-3, 0.0, 1, 8, 1, 0, 0, True, windows_per_epoch=0, valid_windows=0, min_context=8, stride=1, horizon=HORIZON
    )
    splits = backtest_splits(panel, origins=3, step=5, settings=settings)
    assert [s.end for s in splits] == [70, 75, 80] and [s.test_start for s in splits] == [62, 67, 72]
    new_idx = int(np.flatnonzero(panel.keys["produto_cat"] == "NEW")[0])
    assert new_idx in splits[-1].test[0] and new_idx not in splits[-1].train[0]
    assert "too new" in caplog.text and "NEW" in caplog.text
    late = backtest_splits(panel, origins=11, step=8, settings=settings)
    assert [s.end for s in late] == [16, 24, 32, 40, 48, 56, 64, 72, 80] and "only the last 9 origin(s)" in caplog.text
    assert len(late[0].train[0]) == len(late[0].valid[0]) == 0 and len(late[0].test[0]) == len(panel.keys) - 1
    with pytest.raises(InputError, match=r"data cover 80 weeks; training needs at least 87"):
        backtest_splits(panel, origins=1, step=0, settings=replace(settings, horizon=40, min_context=6))


def test_stride_keeps_latest_window(panel_df):
    panel, _ = _panel(panel_df)
    full, sparse = _split(panel), _split(panel, stride=4)
    assert len(sparse.train[0]) == pytest.approx(len(full.train[0]) / 4, abs=len(panel.keys))
    assert sparse.train[1].max() == full.train[1].max() == full.valid_start - 1


def test_refit_trains_on_every_week(panel_df):
    panel, _ = _panel(panel_df)
    series, cuts = refit_windows(panel, min_context=8, stride=1)
    n_weeks = len(panel.dates)
    assert cuts.max() == n_weeks - 1 and set(series) == set(range(len(panel.keys)))
    batch = gather_windows(panel.values, panel.start, series, cuts, context=30, horizon=HORIZON, target_end=n_weeks)
    target_weeks = (cuts[:, None] + np.arange(HORIZON))[batch["future_observed_mask"][..., 0].numpy()]
    assert set(target_weeks) == set(range(8, n_weeks))  # every week after the first context is a target


def test_each_epoch_draws_other_windows(panel_df, model_dir, tmp_path):
    panel, _ = _panel(panel_df)
    split = _split(panel)
    data = scale_panel(panel, fit_group_scaler(panel, fit_end=split.fit_end))
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    datasets = window_datasets(data, {"train": split.train}, model=model, horizon=HORIZON, train_end=split.valid_start)
    settings = TrainSettings(
        1e-3, 0.0, 2, 8, 1, 0, 0, True, windows_per_epoch=40, valid_windows=0, min_context=8, stride=1, horizon=HORIZON
    )
    trainer = make_trainer(model, datasets, out_dir=tmp_path / "t", settings=settings, metric=None)
    assert len(trainer.get_train_dataloader()) == 5  # 40 windows per epoch in batches of 8
    sampler = trainer._get_train_sampler()
    first, second = list(sampler), list(sampler)
    assert len(set(first)) == len(first) == 40 and first != second and max(first + second) < len(split.train[0])


def test_scaler_fitted_on_train_only(panel_df):
    panel, _ = _panel(panel_df)
    split = _split(panel)
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


@pytest.mark.parametrize("ids", [("produto_cat", "uf_cat"), ("produto_cat",)])
def test_saved_scaler_arrays_equal_the_preprocessor(ids, tmp_path):
    """scalers.npz (what predict reads) gives the same scaling as granite's preprocessor, for one or more id
    columns, and leaves a series it does not know to the series' own history."""
    df = make_panel(n_products=4).assign(produto_cat=lambda d: d["produto_cat"] + "/" + d["uf_cat"])
    panel, _ = resample_weekly(df, date_column="date", id_columns=ids, target_columns=TARGETS)
    seen = np.arange(len(panel.keys)) != 1
    tsp = fit_group_scaler(
        replace(panel, keys=panel.keys[seen], values=panel.values[seen], start=panel.start[seen]),
        fit_end=np.full(seen.sum(), 60),
    )
    SeriesScalers.of(tsp).save(tmp_path / "scalers.npz")
    ours = panel_scaling(SeriesScalers.load(tmp_path / "scalers.npz"), panel)
    assert list(ours.known) == list(seen)
    for s, key in enumerate(panel.keys[seen].itertuples(index=False, name=None)):  # granite's own lookup
        scaler = tsp.target_scaler_dict[key if len(key) > 1 else key[0]]
        np.testing.assert_array_equal(ours.mean[seen][s], scaler.mean_)
        np.testing.assert_array_equal(ours.scale[seen][s], scaler.scale_)
    np.testing.assert_allclose(ours.mean[1], panel.values[1].mean(0))


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
    panel, _ = _panel(panel_df)
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


def test_short_axis_softmax_gives_the_library_softmaxs_forecast_and_gradients(model_dir):
    ours = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    unfreeze_only(ours, ("fc1", "fc2"))
    library = copy.deepcopy(ours)
    for module in library.modules():
        if isinstance(module, TinyTimeMixerGatedAttention):
            module.attn_softmax = torch.nn.Softmax(dim=-1)
    shapes = []
    for module in ours.modules():
        if isinstance(module, ShortAxisSoftmax):
            module.register_forward_hook(lambda _, inputs, __: shapes.append(inputs[0].shape))
    torch.manual_seed(0)
    past, future = torch.randn(8, ours.config.context_length, 2), torch.randn(8, HORIZON, 2)
    runs = []
    for model in (ours, library):
        out = model(past_values=past, future_values=future, freq_token=torch.full((8,), 9))
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        runs.append((out.prediction_outputs.detach(), grads))
    assert any(s[-1] < s[-2] for s in shapes) and any(s[-1] > s[-2] for s in shapes)  # both ways were taken
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for ours_grad, library_grad in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(ours_grad, library_grad, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("ids", [IDS, ("produto_cat",)])
def test_scaler_statistics_equal_granite_train(panel_df, ids):
    """fit_group_scaler computes all series at once; granite's TimeSeriesPreprocessor.train fits them one by one."""
    from tsfm_public import TimeSeriesPreprocessor

    df = panel_df[panel_df["uf_cat"] == "SP"] if len(ids) == 1 else panel_df
    df = pd.concat([df, df[df["produto_cat"] == "001"].assign(produto_cat="FLAT", vendas=7.0, faturamento=0.0)])
    df = pd.concat([df, df[df["produto_cat"] == "002"].tail(30).assign(produto_cat="LATE")])
    panel, _ = resample_weekly(df, date_column="date", id_columns=ids, target_columns=TARGETS)
    fit_end = np.where(np.arange(len(panel.keys)) % 2, 60, 45)
    ours = fit_group_scaler(panel, fit_end=fit_end)
    rows = (np.arange(len(panel.dates)) >= panel.start[:, None]) & (np.arange(len(panel.dates)) < fit_end[:, None])
    theirs = TimeSeriesPreprocessor(
        timestamp_column="date",
        id_columns=list(ids),
        target_columns=list(TARGETS),
        scaling=True,
        scaler_type="standard",
        freq="W",
        encode_categorical=False,
    ).train(_scaler_frame(panel, rows))
    assert ours.target_scaler_dict.keys() == theirs.target_scaler_dict.keys()
    for key, mine in ours.target_scaler_dict.items():
        reference = theirs.target_scaler_dict[key]
        for attribute in ("mean_", "var_", "scale_"):
            np.testing.assert_allclose(getattr(mine, attribute), getattr(reference, attribute), rtol=1e-12, atol=1e-12)
        assert mine.n_samples_seen_ == reference.n_samples_seen_
        assert list(mine.feature_names_in_) == list(reference.feature_names_in_)
    flat = ours.target_scaler_dict["FLAT" if len(ids) == 1 else ("FLAT", "SP")]
    np.testing.assert_array_equal(flat.scale_, [1.0, 1.0])  # constant series: scale 1, as sklearn sets it
    long = df[df["produto_cat"] != "LATE"].sort_values([*ids, "date"]).reset_index(drop=True)  # LATE: no fit weeks
    pd.testing.assert_frame_equal(ours.preprocess(long), theirs.preprocess(long))
