"""Totals per id column and overall: bottom-up sums with intervals calibrated at their own level."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sales_forecast.selection import OriginResult
from sales_forecast.totals import SCALE_FLOOR, TOTAL, add_sums, backtest_totals, level_scale, level_sums, totals_frame

TARGETS = ("vendas", "faturamento")


def _forecast(id_columns: tuple, n_weeks: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keys = pd.MultiIndex.from_product([[f"v{i}" for i in range(2 + k)] for k, _ in enumerate(id_columns)])
    dates = pd.date_range("2024-01-07", periods=n_weeks, freq="W-SUN")
    rows = pd.DataFrame([(*key, date) for key in keys for date in dates], columns=[*id_columns, "date"])
    for target in TARGETS:
        rows[target] = rng.uniform(10, 100, len(rows))
    return rows


def _origins(n_origins: int = 3, n_series: int = 60, horizon: int = 4, seed: int = 0) -> list[OriginResult]:
    rng = np.random.default_rng(seed)
    keys = pd.DataFrame(
        {"produto_cat": [f"p{i % 20}" for i in range(n_series)], "uf_cat": [f"u{i % 3}" for i in range(n_series)]}
    )
    origins = []
    for k in range(n_origins):
        y = rng.uniform(50, 150, (n_series, horizon, 2))
        forecast = y * rng.normal(1, 0.2, y.shape)
        scale = np.full((n_series, 2), 30.0)
        start = pd.Timestamp("2024-01-03") + pd.Timedelta(weeks=horizon * k)
        scales = {"series": np.repeat(scale[:, None], horizon, axis=1)}
        origins.append(OriginResult(str(start.date()), keys, y, {"zero_shot": forecast}, scales, scale, {}))
    return origins


@pytest.mark.parametrize("id_columns", [("produto_cat",), ("produto_cat", "uf_cat"), ("loja", "sku", "canal")])
def test_totals_are_the_sums_of_the_series_forecasts_at_every_level(id_columns):
    forecast, columns = _forecast(id_columns), {"id_columns": id_columns, "targets": TARGETS, "date_column": "date"}
    totals = totals_frame(level_sums(forecast, **columns), None, **columns)
    assert list(totals["nivel"].unique()) == [*id_columns, TOTAL]
    for name in id_columns:
        expected = forecast.groupby([name, "date"])[list(TARGETS)].sum().reset_index()
        got = totals[totals["nivel"] == name].rename(columns={"chave": name})[[name, "date", *TARGETS]]
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    overall = totals[totals["nivel"] == TOTAL].set_index("date")[list(TARGETS)]
    pd.testing.assert_frame_equal(overall, forecast.groupby("date")[list(TARGETS)].sum(), check_names=False)
    for name in id_columns:  # coherent: every level adds up to the overall total
        level = totals[totals["nivel"] == name].groupby("date")[list(TARGETS)].sum()
        np.testing.assert_allclose(level.to_numpy(), overall.to_numpy())
    half = len(forecast) // 8 * 4  # the first half of the series (4 weeks each): predict mode sums part by part
    parts = [level_sums(forecast.iloc[:half], **columns), level_sums(forecast.iloc[half:], **columns)]
    pd.testing.assert_frame_equal(totals_frame(add_sums(parts), None, **columns), totals)


def test_totals_bounds_come_from_their_own_level_and_are_ordered():
    origins = _origins()
    intervals, figures = backtest_totals(
        origins, {"vendas": "zero_shot", "faturamento": "zero_shot"}, level=0.8, targets=TARGETS
    )
    assert set(figures) == {"produto_cat", "uf_cat", TOTAL}
    assert figures["uf_cat"]["vendas"]["groups"] == 3 and figures[TOTAL]["vendas"]["groups"] == 1
    assert intervals["produto_cat"].pooled is False and intervals[TOTAL].pooled is True  # 20 x 3 windows vs 3
    for name in figures:
        assert 0 <= figures[name]["vendas"]["wape"] < 0.3 and "interval_coverage" in figures[name]["vendas"]
    # independent 20% errors cancel in sums: the total's interval is relatively narrower than a product's
    columns = {"id_columns": ("produto_cat", "uf_cat"), "targets": TARGETS, "date_column": "date"}
    totals = totals_frame(level_sums(_forecast(columns["id_columns"]), **columns), intervals, **columns)
    for target in TARGETS:
        assert (totals[f"{target}_lower"] <= totals[target]).all() and (
            totals[target] <= totals[f"{target}_upper"]
        ).all()
        width = (totals[f"{target}_upper"] - totals[f"{target}_lower"]) / totals[target]
        assert width[totals["nivel"] == TOTAL].mean() < width[totals["nivel"] == "produto_cat"].mean()


def test_totals_bounds_follow_each_weeks_forecast_with_a_floor_for_weeks_forecast_near_zero():
    """Errors measured relative to each week's total forecast: a week forecast at twice the others (a promotion)
    gets twice their interval. A week forecast at 0 is measured in a quarter of the group's mean forecast
    (SCALE_FLOOR): a sale that week stays an error of a few forecasts, not of 1e9."""
    origins, selection = _origins(), {"vendas": "zero_shot", "faturamento": "zero_shot"}
    intervals, _ = backtest_totals(origins, selection, level=0.8, targets=TARGETS)
    point = np.full((3, 4, 2), 1000.0)
    point[:, 1] = 2000.0
    lower, upper = intervals["uf_cat"].bounds(point)
    np.testing.assert_allclose((upper - lower)[:, 1], 2 * (upper - lower)[:, 0])
    point[:, 2] = 0.0
    scale = level_scale(point)
    np.testing.assert_allclose(scale[:, [0, 1, 3]], point[:, [0, 1, 3]])
    np.testing.assert_allclose(scale[:, 2], SCALE_FLOOR * 1000.0)  # the mean of 1000, 2000, 0, 1000


def test_totals_calibrate_on_the_latest_year_of_origins_that_hold_enough_values():
    """An early origin that erred 3x (a model trained on a year of data) leaves the UF and total intervals alone: the
    last two origins span a year and hold enough UF-weeks; the 20 products need all three for 50 windows."""
    origins, selection = _origins(horizon=26), {"vendas": "zero_shot", "faturamento": "zero_shot"}

    def wild(o: OriginResult) -> OriginResult:  # its errors 3x
        return dataclasses.replace(o, forecasts={"zero_shot": o.y + 3 * (o.forecasts["zero_shot"] - o.y)})

    calm, _ = backtest_totals(origins, selection, level=0.8, targets=TARGETS)
    mixed, _ = backtest_totals([wild(origins[0]), *origins[1:]], selection, level=0.8, targets=TARGETS)
    point = np.full((3, 26, 2), 1000.0)
    np.testing.assert_array_equal(mixed["uf_cat"].bounds(point), calm["uf_cat"].bounds(point))  # 3 UFs x 26 weeks
    total = np.full((1, 26, 2), 1000.0)
    assert np.array_equal(mixed[TOTAL].bounds(total), calm[TOTAL].bounds(total))  # the last two origins: 52 weeks
    assert not np.array_equal(mixed["produto_cat"].bounds(point), calm["produto_cat"].bounds(point))  # 20 a window
    mixed, _ = backtest_totals([origins[0], wild(origins[1]), origins[2]], selection, level=0.8, targets=TARGETS)
    assert not np.array_equal(mixed["uf_cat"].bounds(point), calm["uf_cat"].bounds(point))  # its season counts
