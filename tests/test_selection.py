"""Selection: every method scored at every origin, the lowest mean backtest WAPE per target, refit epochs."""

import numpy as np
import pandas as pd
import pytest
from conftest import HORIZON

import config
from sales_forecast.forecast import method_parts
from sales_forecast.selection import OriginResult, refit_epochs, score_backtest

TARGETS = ("vendas", "faturamento")


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


def _score(origins, forced="auto"):
    return score_backtest(origins, targets=TARGETS, methods=config.METHODS, forced=forced)


@pytest.mark.parametrize("winner, loser", [("fine_tuned", "zero_shot"), ("zero_shot", "fine_tuned")])
def test_selection_picks_the_method_with_the_lowest_backtest_wape(winner, loser):
    origins = [_origin({winner: 1.0, loser: 10.0, "seasonal_naive": 30.0, "naive": -40.0}) for _ in range(3)]
    per_series, figures, selection = _score(origins)
    assert selection == {"vendas": winner, "faturamento": winner}
    chosen = figures["selection"]["vendas"]
    assert chosen["wape"] == pytest.approx(0.01) and chosen["zero_shot_wape"] == pytest.approx(
        0.01 if winner == "zero_shot" else 0.1
    )
    assert set(per_series["origin"]) == {"2023-01-01"} and len(figures["backtest"]["origins"]) == 3
    forced = _score(origins, forced="seasonal_naive")[2]
    assert forced == {"vendas": "seasonal_naive", "faturamento": "seasonal_naive"}


def test_a_blend_wins_when_errors_cancel():
    origins = [_origin({"fine_tuned": 10.0, "zero_shot": 12.0, "seasonal_naive": -10.0, "naive": 50.0})]
    assert _score(origins)[2]["vendas"] == "fine_tuned+seasonal_naive"


def test_a_tie_goes_to_zero_shot():
    origins = [_origin({"fine_tuned": 5.0, "zero_shot": 5.0, "seasonal_naive": 30.0, "naive": 40.0})]
    assert _score(origins)[2] == {"vendas": "zero_shot", "faturamento": "zero_shot"}


def test_every_method_is_scored_and_blends_are_made_of_single_methods():
    origins = [_origin({"fine_tuned": 1.0, "zero_shot": 2.0, "seasonal_naive": 3.0, "naive": 4.0})]
    _, figures, _ = _score(origins)
    assert set(figures["metrics"]["vendas"]) == set(figures["metrics"]["faturamento"]) == set(config.METHODS)
    singles = {m for m in config.METHODS if len(method_parts(m)) == 1}
    assert all(set(method_parts(m)) <= singles for m in config.METHODS)


def test_refit_epochs_is_the_window_weighted_median_of_trained_origins():
    trained = [
        _origin({}, {"best_epoch": 4, "train_windows": 100, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 12, "train_windows": 1000, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 0, "train_windows": 0}),  # no training: no vote
    ]
    assert refit_epochs(trained) == 12
    assert refit_epochs(trained[2:]) == 0
