"""Metric formulas against hand-computed values, and the MASE scale."""

import numpy as np
import pytest

from sales_forecast.evaluation import error_metrics, mase_scale


def test_error_metrics_by_hand():
    y = np.array([[10.0, 0.0, 30.0, 20.0]])
    pred = np.array([[12.0, 1.0, 27.0, 20.0]])
    m = error_metrics(y, pred, np.array([2.0]))
    # errors +2, +1, -3, 0: |e| sum 6, e sum 0, sum |y| 60
    assert m["mae"][0] == pytest.approx(1.5)
    assert m["rmse"][0] == pytest.approx(np.sqrt((4 + 1 + 9) / 4))
    assert m["wape"][0] == pytest.approx(0.1)
    assert m["mase"][0] == pytest.approx(0.75)
    assert m["bias"][0] == pytest.approx(0.0)
    over = error_metrics(y, y * 1.1, np.array([1.0]))
    assert over["bias"][0] == pytest.approx(0.1)


def test_mase_scale_seasonal_and_short_history():
    t = np.arange(120, dtype=float)
    values = np.stack([t, t]).reshape(2, 120, 1).copy()
    start = np.array([0, 80])  # second series has 20 weeks before week 100: lag 1
    scale = mase_scale(values, start, end=100)
    assert scale[0, 0] == pytest.approx(52.0)  # y[t] - y[t-52] = 52 for a line
    assert scale[1, 0] == pytest.approx(1.0)
