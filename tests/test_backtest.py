"""The backtest orchestration of ttm_model.py: an origin reads nothing from its own future."""

import copy

import numpy as np
import pytest
from conftest import HORIZON, make_panel, settings_for

from sales_forecast.model import build_model, unfreeze_only
from sales_forecast.panel import resample_weekly
from sales_forecast.windows import backtest_splits
from ttm_model import backtest_origin

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")
SETTINGS = [
    "--LEARNING_RATE=1e-3",
    "--NUM_TRAIN_EPOCHS=2",
    "--BATCH_SIZE=16",
    "--EARLY_STOPPING_PATIENCE=1",
    "--SEED=0",
    "--USE_CPU=True",
    "--MAX_TRAIN_WINDOWS=64",
    "--MAX_VALID_WINDOWS=0",
    "--MIN_CONTEXT_WEEKS=8",
    "--TRAIN_STRIDE=2",
    f"--PREDICTION_LENGTH={HORIZON}",
    f"--BACKTEST_STEP={HORIZON}",
    "--BACKTEST_ORIGINS=2",
    "--GBM_TREES=30",
]


@pytest.fixture(scope="module")
def pretrained(model_dir):
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    zero_shot = copy.deepcopy(model)
    unfreeze_only(model, ("decoder*fc1", "decoder*fc2"))
    return model, zero_shot


def test_planted_spike_after_an_origin_changes_nothing_before_it(pretrained, tmp_path):
    settings = settings_for(SETTINGS)
    df = make_panel(n_weeks=90)  # the first origin has 74 weeks: more than the gbm's 52 lags
    panel, _ = resample_weekly(df, date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = backtest_splits(panel, backtest=settings.backtest, horizon=HORIZON)[0]
    spiked = copy.deepcopy(panel)
    spiked.values[:, split.end :] *= 1000  # the weeks after the first origin's test window
    plain, spiked = _same_origin_trained_and_forecast(panel, spiked, split, settings, pretrained, tmp_path)
    np.testing.assert_array_equal(plain.y, spiked.y)
    assert plain.scales.keys() == spiked.scales.keys()
    for kind, scale in plain.scales.items():
        np.testing.assert_array_equal(scale, spiked.scales[kind])
    assert np.isfinite(plain.forecasts["gbm"]).all()


def _same_origin_trained_and_forecast(panel, other, split, settings, pretrained, tmp_path):
    """The origin's results on both panels, after asserting the same training and forecasts."""
    model, zero_shot = pretrained
    results = [
        backtest_origin(
            p,
            split,
            pretrained=model,
            zero_shot=zero_shot,
            settings=settings,
            out_dir=tmp_path / name,
            resume=("x", True),
        )
        for name, p in (("one", panel), ("other", other))
    ]
    assert results[0].training["valid_wape_best"] == results[1].training["valid_wape_best"]
    for method in results[0].forecasts:
        np.testing.assert_array_equal(results[0].forecasts[method], results[1].forecasts[method])
    return results


def test_a_data_gap_open_at_an_origin_reads_nothing_of_the_weeks_its_rows_come_back(pretrained, tmp_path):
    """A gap interpolated over the whole panel reads the week its rows came back; an origin inside the gap must not:
    spiking every week from the origin on (the actuals it is scored on, the rows after the gap) changes nothing of
    its training and forecasts."""
    settings = settings_for(SETTINGS)
    df = make_panel(n_weeks=90)
    weeks = np.sort(df["date"].unique())
    in_gap = (df["produto_cat"] == "001") & (df["uf_cat"] == "RJ") & df["date"].isin(weeks[66:79])  # series 0
    df = df[~in_gap]
    panels = []
    for spike in (1, 1000):
        rows = df.copy()
        rows.loc[rows["date"] >= weeks[74], list(TARGETS)] *= spike
        panels.append(resample_weekly(rows, date_column="date", id_columns=IDS, target_columns=TARGETS, gap_weeks=13))
    (plain, _), (spiked, _) = panels
    split = backtest_splits(plain, backtest=settings.backtest, horizon=HORIZON)[0]
    assert split.test_start == 74 and plain.gap[0, 66:79].all() and (plain.values[0, 66:74] > 0).all()
    _same_origin_trained_and_forecast(plain, spiked, split, settings, pretrained, tmp_path)


def test_rerunning_an_origin_whose_training_stopped_early_trains_no_further(pretrained, tmp_path):
    argv = [a for a in SETTINGS if not a.startswith(("--NUM_TRAIN_EPOCHS", "--LEARNING_RATE"))]
    settings = settings_for([*argv, "--NUM_TRAIN_EPOCHS=8", "--LEARNING_RATE=0.5"])  # diverges: stops early
    panel, _ = resample_weekly(make_panel(n_weeks=90), date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = backtest_splits(panel, backtest=settings.backtest, horizon=HORIZON)[0]
    model, zero_shot = pretrained
    first, again = (
        backtest_origin(
            panel,
            split,
            pretrained=model,
            zero_shot=zero_shot,
            settings=settings,
            out_dir=tmp_path,
            resume=("x", False),
        )
        for _ in range(2)
    )
    assert first.training["epochs"] < 8  # early stopping ended it
    assert again.training["epochs"] == first.training["epochs"]
    assert again.training["valid_wape_best"] == first.training["valid_wape_best"]
    np.testing.assert_array_equal(again.forecasts["fine_tuned"], first.forecasts["fine_tuned"])
