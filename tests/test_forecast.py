"""Forecasts by method: the baselines, blends of a method's parts, and previsoes.csv's rows."""

import numpy as np
import pandas as pd

from sales_forecast.forecast import baseline_forecasts, blend, forecast_frame, method_parts, selected_forecast


def test_baselines():
    values = np.arange(200, dtype=float).reshape(1, 200, 1)
    out = baseline_forecasts(values, np.array([0]), (np.array([0]), np.array([150])), horizon=3)
    np.testing.assert_array_equal(out["naive"][0, :, 0], [149, 149, 149])
    np.testing.assert_array_equal(out["seasonal_naive"][0, :, 0], [98, 99, 100])
    young = baseline_forecasts(values, np.array([120]), (np.array([0]), np.array([150])), horizon=2)
    np.testing.assert_array_equal(young["seasonal_naive"][0, :, 0], [149, 149])  # < 52 weeks: last value


def test_a_blend_is_the_mean_of_its_parts_and_each_target_takes_its_method():
    forecasts = {"a": np.full((2, 3, 2), 1.0), "b": np.full((2, 3, 2), 4.0)}
    assert method_parts("a+b") == ("a", "b") and method_parts("a") == ("a",)
    np.testing.assert_array_equal(blend(forecasts, "a+b"), np.full((2, 3, 2), 2.5))
    chosen = selected_forecast(forecasts, {"vendas": "b", "faturamento": "a+b"})
    assert chosen[..., 0].tolist() == [[4.0] * 3] * 2 and chosen[..., 1].tolist() == [[2.5] * 3] * 2


def test_forecast_rows_are_series_by_week_with_bounds():
    keys = pd.DataFrame({"produto_cat": ["1", "2"], "uf_cat": ["SP", "RJ"]})
    point = np.arange(12, dtype=float).reshape(2, 3, 2)
    dates = pd.date_range("2024-01-07", periods=3, freq="W-SUN")
    frame = forecast_frame(
        keys, point, (point - 1, point + 1), dates=dates, targets=("vendas", "faturamento"), date_column="date"
    )
    assert list(frame.columns) == [
        "date",
        "produto_cat",
        "uf_cat",
        "vendas",
        "vendas_lower",
        "vendas_upper",
        "faturamento",
        "faturamento_lower",
        "faturamento_upper",
    ]
    assert frame["produto_cat"].tolist() == ["1"] * 3 + ["2"] * 3 and frame["vendas"].tolist() == [0, 2, 4, 6, 8, 10]
    assert (frame["faturamento_upper"] - frame["faturamento"]).eq(1).all()
