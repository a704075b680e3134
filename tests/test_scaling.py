"""Scaling: per-series scalers fitted on training weeks only, equal to granite-tsfm's TimeSeriesPreprocessor."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import HORIZON, IDS, TARGETS, make_panel, weekly

from sales_forecast.panel import resample_weekly
from sales_forecast.scaling import (
    Scaling,
    SeriesScalers,
    fit_and_scale,
    fit_group_scaler,
    panel_scaling,
    scale_panel,
    scaler_frame,
)
from sales_forecast.windows import split_by_time


def _split(panel):
    return split_by_time(panel, end=len(panel.dates), horizon=HORIZON, min_context=8, stride=1)


def test_scaler_fitted_on_train_only(panel_df):
    panel, _ = weekly(panel_df)
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
    panel, _ = weekly(panel_df)
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
    ).train(scaler_frame(panel, rows))
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


def test_scaling_round_trips_and_unscale_clips_at_zero():
    scaling = Scaling(mean=np.array([[2.0], [10.0]]), scale=np.array([[1.0], [4.0]]), known=np.ones(2, bool))
    values = np.array([[[1.0], [5.0]], [[30.0], [2.0]]])  # (series, weeks, targets)
    np.testing.assert_allclose(scaling.apply(values)[1, :, 0], [5.0, -2.0])
    np.testing.assert_allclose(scaling.invert(scaling.apply(values), (np.array([0, 1]), np.array([0, 0]))), values)
    out = scaling.invert(np.array([[[-5.0], [1.0]]]), (np.array([0]), np.array([0])))
    np.testing.assert_array_equal(out[0, :, 0], [0.0, 3.0])
    factor = np.array([[[1.0], [2.0], [4.0]], [[0.5], [1.0], [1.0]]])  # (series, weeks + 1 future week, targets)
    driven = replace(scaling, factor=factor)
    np.testing.assert_allclose(driven.apply(values)[0, :, 0], [-1.0, 0.5])  # 1 / 1 - 2, 5 / 2 - 2
    np.testing.assert_allclose(driven.invert(driven.apply(values), (np.array([0, 1]), np.array([0, 0]))), values)
    np.testing.assert_allclose(driven.invert(np.array([[[0.5]]]), (np.array([0]), np.array([2])))[0, 0], [10.0])


def test_fit_and_scale_is_the_scalers_fitted_before_fit_end(panel_df):
    panel, _ = weekly(panel_df)
    fit_end = np.full(len(panel.keys), 50)
    (tsp, drivers), data = fit_and_scale(panel, fit_end=fit_end, driver_effect=True)
    expected = scale_panel(panel, fit_group_scaler(panel, fit_end=fit_end))
    np.testing.assert_array_equal(data.values, expected.values)
    np.testing.assert_allclose(data.scaling.mean, panel.values[:, :50].mean(1))
    assert drivers.kinds == () and data.drivers is None  # a panel without drivers
    assert drivers.effect is None and data.scaling.factor is None  # nothing to divide out
