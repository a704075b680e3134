"""Selection: every method scored at every origin, the lowest mean backtest WAPE per target (origins weighted by their
training windows), refit epochs."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import HORIZON

import config
from sales_forecast.forecast import blend, method_parts, weighted_name
from sales_forecast.intervals import interval_bounds, interval_scale
from sales_forecast.selection import (
    OriginResult,
    _grid_errors,
    _weight_grid,
    backtest_intervals,
    calibration_indices,
    fitted_blends,
    method_intervals,
    next_week,
    refit_epochs,
    score_backtest,
)

TARGETS = ("vendas", "faturamento")
TRAINED = {"best_epoch": 3, "train_windows": 100, "valid_wape_best": 0.3}


def _origin(errors: dict[str, float], training: dict | None = None, n: int = 4) -> OriginResult:
    y = np.full((n, HORIZON, 2), 100.0)
    return OriginResult(
        "2023-01-01",
        pd.DataFrame({"produto_cat": [f"{i}" for i in range(n)], "uf_cat": "SP"}),
        y,
        {method: y + error for method, error in ({"gbm": 70.0} | errors).items()},
        {"series": np.ones((n, HORIZON, 2))},
        np.ones((n, 2)),
        training or {"best_epoch": 0, "train_windows": 0},
    )


def _score(origins, forced="auto"):
    weights = fitted_blends(origins, config.METHODS, len(TARGETS))
    return score_backtest(origins, targets=TARGETS, methods=config.METHODS, forced=forced, weights=weights)


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


def test_the_mean_over_origins_weighs_each_by_its_training_windows():
    # zero_shot errs 1 then 3, fine_tuned 4 then 1: equal weights pick zero_shot (2.0 vs 2.5), the windows 100 and
    # 300 fine_tuned (2.5 vs 1.75); an origin without training weighs nothing, however fine_tuned erred there
    early = {"zero_shot": 1.0, "fine_tuned": 4.0, "seasonal_naive": 30.0, "naive": 40.0}
    late = {"zero_shot": 3.0, "fine_tuned": 1.0, "seasonal_naive": 30.0, "naive": 40.0}
    small, large = TRAINED | {"train_windows": 100}, TRAINED | {"train_windows": 300}
    untrained = _origin({"zero_shot": 1.0, "fine_tuned": 50.0, "seasonal_naive": 30.0, "naive": 40.0})
    _, figures, selection = _score([untrained, _origin(early, small), _origin(late, large)])
    assert selection == {"vendas": "fine_tuned", "faturamento": "fine_tuned"}
    assert figures["backtest"]["origin_weights"] == pytest.approx([0.0, 0.25, 0.75])
    assert figures["metrics"]["vendas"]["fine_tuned"]["wape"] == pytest.approx(0.0175)
    assert figures["metrics"]["vendas"]["zero_shot"]["wape"] == pytest.approx(0.025)
    without_training = [_origin(early), _origin(late)]  # none trained: each the same
    assert _score(without_training)[2] == {"vendas": "zero_shot", "faturamento": "zero_shot"}


def test_refit_epochs_is_the_window_weighted_median_of_trained_origins():
    trained = [
        _origin({}, {"best_epoch": 4, "train_windows": 100, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 12, "train_windows": 1000, "valid_wape_best": 0.3}),
        _origin({}, {"best_epoch": 0, "train_windows": 0}),  # no training: no vote
    ]
    assert refit_epochs(trained) == 12
    assert refit_epochs(trained[2:]) == 0


def test_selection_picks_the_gbm_or_its_blend_when_it_wins_and_keeps_ttm_when_not():
    alone = [_origin({"gbm": 1.0, "fine_tuned": 10.0, "zero_shot": 12.0, "seasonal_naive": 30.0, "naive": 40.0})]
    assert _score(alone)[2] == {"vendas": "gbm", "faturamento": "gbm"}
    cancel = [_origin({"gbm": -10.0, "fine_tuned": 10.0, "zero_shot": 30.0, "seasonal_naive": 30.0, "naive": 40.0})]
    assert _score(cancel)[2]["vendas"] == "gbm+fine_tuned"
    worse = [_origin({"gbm": 20.0, "fine_tuned": 1.0, "zero_shot": 12.0, "seasonal_naive": 30.0, "naive": 40.0})]
    assert _score(worse)[2] == {"vendas": "fine_tuned", "faturamento": "fine_tuned"}


def test_fitted_blend_weights_come_from_earlier_origins_only():
    # gbm errs +3 and fine_tuned -1: 0.25/0.75 cancels exactly; equal weights leave +1
    errors = {"gbm": 3.0, "fine_tuned": -1.0, "zero_shot": 20.0, "seasonal_naive": 30.0, "naive": 40.0}
    origins = [_origin(errors, TRAINED)] * 3
    _, figures, selection = _score(origins)
    used = figures["backtest"]["blend_weights"]["gbm+fine_tuned@fitted"]["vendas"]
    assert used == ["0.50*gbm+0.50*fine_tuned"] + ["0.25*gbm+0.75*fine_tuned"] * 3  # origin 1: equal, none before
    assert selection["vendas"] == "0.25*gbm+0.75*fine_tuned"
    assert figures["selection"]["vendas"]["candidate"] == "gbm+fine_tuned@fitted"
    per_origin = [o["metrics"]["vendas"]["gbm+fine_tuned@fitted"]["wape"] for o in figures["backtest"]["origins"]]
    assert per_origin == pytest.approx([0.01, 0.0, 0.0])


def test_fitted_blend_weights_ignore_origins_without_training():
    # an untrained origin where 0.10/0.90 would cancel, then trained ones where 0.25/0.75 does
    untrained = _origin({"gbm": -9.0, "fine_tuned": 1.0, "zero_shot": 20.0, "seasonal_naive": 30.0, "naive": 40.0})
    errors = {"gbm": 3.0, "fine_tuned": -1.0, "zero_shot": 20.0, "seasonal_naive": 30.0, "naive": 40.0}
    figures = _score([untrained, _origin(errors, TRAINED), _origin(errors, TRAINED)])[1]
    used = figures["backtest"]["blend_weights"]["gbm+fine_tuned@fitted"]["vendas"]
    assert used == ["0.50*gbm+0.50*fine_tuned"] * 2 + ["0.25*gbm+0.75*fine_tuned"] * 2


def test_the_weight_search_errs_exactly_as_forecast_blend_does():
    # float32 forecasts, series the gbm cannot forecast (NaN) and weightings where only it has weight (the fallback)
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 50.0, (40, HORIZON, 2))
    forecasts = {m: (y * rng.lognormal(0, 0.3, y.shape) - 10).astype(np.float32) for m in ("gbm", "zero_shot")}
    forecasts["fine_tuned"] = (y + rng.normal(0, 20, y.shape)).astype(np.float32)
    forecasts["gbm"][:5] = np.nan
    origin = dataclasses.replace(_origin({}, TRAINED), y=y, forecasts=forecasts)
    for parts in (("gbm", "fine_tuned"), ("gbm", "fine_tuned", "zero_shot")):
        grid = _weight_grid(len(parts))
        assert len(grid) == {2: 21, 3: 231}[len(parts)]
        for target in (0, 1):
            by_blend = [
                np.abs(y[..., target] - np.clip(blend(forecasts, weighted_name(parts, w))[..., target], 0, None)).sum()
                for w in grid
            ]
            assert _grid_errors(origin, parts, target, grid) == by_blend


def test_a_forced_method_with_weights_is_scored_and_used():
    origins = [_origin({"gbm": 3.0, "fine_tuned": -1.0, "zero_shot": 20.0, "seasonal_naive": 30.0, "naive": 40.0})]
    _, figures, selection = _score(origins, forced="0.25*gbm+0.75*fine_tuned")
    assert selection["vendas"] == "0.25*gbm+0.75*fine_tuned"
    assert figures["metrics"]["vendas"]["0.25*gbm+0.75*fine_tuned"]["wape"] == pytest.approx(0.0)


def _origin_at(first_week: pd.Timestamp, weeks_before: int, n: int, trained: bool = True) -> OriginResult:
    start = first_week - pd.Timedelta(weeks=weeks_before)
    return dataclasses.replace(_origin({}, TRAINED if trained else None, n=n), start=str(start.date()))


def test_intervals_calibrate_on_the_same_season_a_year_before_else_on_the_latest_year():
    first = pd.Timestamp("2024-06-05")
    origins = [_origin_at(first, weeks, 60) for weeks in (104, 60, 52, HORIZON)]
    assert next_week(origins) == first
    windows = [len(o.y) for o in origins]
    assert calibration_indices(origins, windows, first) == [0, 2]  # one and two years before
    untrained = [*origins[:2], _origin_at(first, 52, 60, trained=False), origins[3]]
    assert calibration_indices(untrained, windows, first) == [0]  # an origin that never trained stays out
    # too few windows a year before: the latest origins spanning a year with 50 windows (60 + 8 weeks, 3 x 20)
    assert calibration_indices(origins, [20] * 4, first) == [1, 2, 3]
    assert calibration_indices(origins[-1:], [60], first) == [0]  # none spans a year: all of them
    untrained = [_origin_at(first, HORIZON + weeks, 60, trained=False) for weeks in (66, 44, 22, 0)]
    assert calibration_indices(untrained, windows, first) == [1, 2, 3]  # 44 weeks between starts + 8: a year


def test_the_future_interval_is_as_wide_as_the_errors_of_the_same_weeks_a_year_before():
    rng = np.random.default_rng(0)
    first = pd.Timestamp("2024-06-05")

    def origin(weeks_before: int, spread: float, trained: bool = True) -> OriginResult:
        o = _origin_at(first, weeks_before, 200, trained)
        noisy = o.y + rng.normal(0, spread, o.y.shape)
        return dataclasses.replace(o, forecasts=dict.fromkeys(o.forecasts, noisy))

    def width(origins: list[OriginResult]) -> float:
        conformal, _, _, _ = backtest_intervals(origins, {"vendas": "gbm", "faturamento": "gbm"}, 0.8)
        lower, upper = interval_bounds(conformal, np.full((1, HORIZON, 2), 100.0), np.ones((1, HORIZON, 2)))
        return float((upper - lower).mean())

    calm_season = [origin(60, 30.0), origin(52, 5.0), origin(16, 30.0), origin(HORIZON, 30.0)]
    assert width(calm_season) == pytest.approx(2 * 1.28 * 5.0, rel=0.2)  # the errors of a year before
    untrained = [calm_season[0], origin(52, 5.0, trained=False), *calm_season[2:]]
    assert width(untrained) > 4 * width(calm_season)  # the latest year's, mostly 30-wide errors


@pytest.mark.parametrize("errors_follow_the_factor", [True, False])
def test_the_interval_scale_kind_is_the_one_with_the_lower_held_out_crps(errors_follow_the_factor):
    """Two scales: one per series, and one per week from the drivers' factor (0.2, 1 or 3). When the errors' size
    follows the factor, the drivers' scale wins the held-out CRPS and calibrates the intervals; when it does not,
    the series' scale does."""
    rng = np.random.default_rng(0)
    first = pd.Timestamp("2024-06-05")

    def origin(weeks_before: int) -> OriginResult:
        o = _origin_at(first, weeks_before, 200)
        factor = rng.choice([0.2, 1.0, 3.0], o.y.shape)
        spread = 10 * (factor if errors_follow_the_factor else 1.0)
        noisy = o.y + rng.normal(0, 1, o.y.shape) * spread
        scales = {"series": np.ones(o.y.shape), "drivers": factor}
        return dataclasses.replace(o, forecasts=dict.fromkeys(o.forecasts, noisy), scales=scales)

    origins = [origin(weeks) for weeks in (104, 60, 52, HORIZON)]
    _, figures, _, kind = backtest_intervals(origins, {"vendas": "gbm", "faturamento": "gbm"}, 0.8)
    assert kind == ("drivers" if errors_follow_the_factor else "series") == figures["interval_scale"]
    other = "series" if kind == "drivers" else "drivers"
    assert figures["interval_scale_crps"][kind] < 0.9 * figures["interval_scale_crps"][other]
    assert 0.75 < np.mean(list(figures["interval_coverage"].values())) < 0.85
    series_only = [dataclasses.replace(o, scales={"series": o.scales["series"]}) for o in origins]
    assert backtest_intervals(series_only, {"vendas": "gbm", "faturamento": "gbm"}, 0.8)[3] == "series"


def test_every_method_gets_interval_coverage_width_and_scaled_crps():
    rng = np.random.default_rng(0)
    origins = []
    for _ in range(3):
        origin = _origin({"gbm": 0.0, "fine_tuned": 0.0, "zero_shot": 0.0, "seasonal_naive": 0.0, "naive": 0.0}, n=40)
        noise = {m: rng.normal(0, 10, origin.y.shape) for m in origin.forecasts}
        origins.append(dataclasses.replace(origin, forecasts={m: f + noise[m] for m, f in origin.forecasts.items()}))
    weights = fitted_blends(origins, config.METHODS, len(TARGETS))
    scores = method_intervals(
        origins, methods=config.METHODS, targets=TARGETS, level=0.8, weights=weights, kind="series"
    )
    assert set(scores["vendas"]) == set(config.METHODS)
    naive = scores["vendas"]["naive"]
    assert 0.6 < naive["coverage"] < 0.95 and naive["width"] > 0 and 0 < naive["scaled_crps"] < 1
    assert scores["vendas"]["gbm+fine_tuned"]["width"] < naive["width"]  # independent errors average out


def test_interval_scale_is_the_series_forecast_difficulty_not_its_spread():
    """Two series with the same spread: a smooth season (each week like last year's) and noise. Their std is equal,
    their seasonal-naive error is not: the smooth one gets the narrow interval; a constant one keeps its std."""
    weeks = np.arange(156)
    rng = np.random.default_rng(0)
    smooth = 100 + 30 * np.sin(2 * np.pi * weeks / 52)
    noisy = 100 + rng.normal(0, smooth.std(), len(weeks))
    values = np.stack([smooth, noisy, np.full(len(weeks), 5.0)])[..., None]
    std = values.std(axis=1)
    windows = (np.arange(3), np.full(3, len(weeks)))
    scale = interval_scale(
        values, np.zeros(3, int), len(weeks), np.where(std > 0, std, 1.0), factor=None, windows=windows, horizon=4
    )
    assert scale.shape == (3, 4, 1) and (scale == scale[:, :1]).all()  # one scale for every week without drivers
    assert scale[0, 0, 0] < 0.01 * scale[1, 0, 0]  # same std, a tiny seasonal-naive error
    assert scale[2, 0, 0] == 1.0  # no error to measure: the scaler's


def test_interval_scale_follows_the_drivers_factor():
    """Sales that are the drivers' factor times a calm series (a promotion triples them, a closed week takes 5%):
    measured on the values divided by the factor, a series with promotions is as easy as one without, and each
    week's scale moves with its factor: wide on a promotion week, narrow on a closed one."""
    weeks, horizon = 156, 4
    rng = np.random.default_rng(0)
    factor = np.ones((2, weeks + horizon, 1))
    factor[1, :weeks][rng.random(weeks) < 0.3] = 3.0
    factor[1, weeks:] = [[3.0], [1.0], [0.05], [1.0]]
    values = (100 + rng.normal(0, 5, (1, weeks, 1))) * factor[:, :weeks]  # the same calm series twice
    windows = (np.arange(2), np.full(2, weeks))
    start, std = np.zeros(2, int), values.std(axis=1)
    scale = interval_scale(values, start, weeks, std, factor=factor, windows=windows, horizon=horizon)
    assert scale[1, 1, 0] == pytest.approx(scale[0, 1, 0])  # a plain week of each: as easy with promotions as without
    assert scale[1, :, 0] / scale[1, 1, 0] == pytest.approx([3.0, 1.0, 0.05, 1.0])
    plain = interval_scale(values, start, weeks, std, factor=None, windows=windows, horizon=horizon)
    assert plain[1, 1, 0] > 5 * scale[1, 1, 0]  # without the factor: the promotions' jumps count as errors
