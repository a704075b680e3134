"""Rolling-origin backtest: no leakage from an origin's future, selection of the method per target, refit epochs."""

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import HORIZON, make_panel

from ttm_model import (
    OriginResult,
    TrainSettings,
    backtest_origin,
    backtest_splits,
    build_model,
    refit_epochs,
    resample_weekly,
    sample_windows,
    score_backtest,
    unfreeze_only,
)

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")
SETTINGS = TrainSettings(
    1e-3, 0.0, 2, 16, 1, 0, 0, True, windows_per_epoch=64, valid_windows=0, min_context=8, stride=2, horizon=HORIZON
)


def _origin(errors: dict[str, float], training: dict | None = None, n: int = 4) -> OriginResult:
    y = np.full((n, HORIZON, 2), 100.0)
    return OriginResult(
        "2023-01-01",
        pd.DataFrame({"produto_cat": [f"{i}" for i in range(n)], "uf_cat": "SP"}),
        y,
        {method: y + error for method, error in errors.items()},
        np.ones((n, 2)),
        np.ones((n, 2)),
        training or {"best_epoch": 0, "train_windows": 0},
    )


@pytest.mark.parametrize("winner, loser", [("fine_tuned", "zero_shot"), ("zero_shot", "fine_tuned")])
def test_selection_picks_the_method_with_the_lowest_backtest_wape(winner, loser):
    origins = [_origin({winner: 1.0, loser: 10.0, "seasonal_naive": 30.0, "naive": -40.0}) for _ in range(3)]
    per_series, figures, selection = score_backtest(origins, targets=TARGETS, forced="auto")
    assert selection == {"vendas": winner, "faturamento": winner}
    chosen = figures["selection"]["vendas"]
    assert chosen["wape"] == pytest.approx(0.01) and chosen["zero_shot_wape"] == pytest.approx(
        0.01 if winner == "zero_shot" else 0.1
    )
    assert set(per_series["origin"]) == {"2023-01-01"} and len(figures["backtest"]["origins"]) == 3
    forced = score_backtest(origins, targets=TARGETS, forced="seasonal_naive")[2]
    assert forced == {"vendas": "seasonal_naive", "faturamento": "seasonal_naive"}


def test_a_blend_wins_when_errors_cancel():
    origins = [_origin({"fine_tuned": 10.0, "zero_shot": 12.0, "seasonal_naive": -10.0, "naive": 50.0})]
    assert score_backtest(origins, targets=TARGETS, forced="auto")[2]["vendas"] == "fine_tuned+seasonal_naive"


def test_refit_epochs_is_the_window_weighted_median_of_trained_origins():
    trained = [
        _origin({}, {"best_epoch": 4, "train_windows": 100, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 12, "train_windows": 1000, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 0, "train_windows": 0}),  # no training: no vote
    ]
    assert refit_epochs(trained) == 12
    assert refit_epochs(trained[2:]) == 0


@pytest.fixture(scope="module")
def pretrained(model_dir):
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    zero_shot = copy.deepcopy(model)
    unfreeze_only(model, ("decoder*fc1", "decoder*fc2"))
    return model, zero_shot


def test_planted_spike_after_an_origin_changes_nothing_before_it(pretrained, tmp_path):
    df = make_panel(n_weeks=90)
    panel, _ = resample_weekly(df, date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = backtest_splits(panel, origins=2, step=HORIZON, settings=SETTINGS)[0]
    spiked = copy.deepcopy(panel)
    spiked.values[:, split.end :] *= 1000  # the weeks after the first origin's test window
    model, zero_shot = pretrained
    results = [
        backtest_origin(
            p,
            split,
            pretrained=model,
            zero_shot=zero_shot,
            settings=SETTINGS,
            out_dir=tmp_path / name,
            resume=("x", True),
        )
        for name, p in (("plain", panel), ("spiked", spiked))
    ]
    assert results[0].training["valid_wape_best"] == results[1].training["valid_wape_best"]
    np.testing.assert_array_equal(results[0].y, results[1].y)
    np.testing.assert_array_equal(results[0].scale, results[1].scale)
    for method in results[0].forecasts:
        np.testing.assert_array_equal(results[0].forecasts[method], results[1].forecasts[method])


def test_validation_sample_is_fixed_and_bounded():
    windows = (np.arange(100), np.full(100, 50))
    first, again = sample_windows(windows, 30, seed=3), sample_windows(windows, 30, seed=3)
    assert len(first[0]) == 30 and len(set(first[0])) == 30 and (np.diff(first[0]) > 0).all()
    np.testing.assert_array_equal(first[0], again[0])  # the same windows every epoch and every run
    assert sample_windows(windows, 0, seed=3) is windows and sample_windows(windows, 100, seed=3) is windows
