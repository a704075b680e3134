"""Metric formulas against hand-computed values, baselines and the MASE scale."""

import numpy as np
import pytest

from evaluation import baseline_forecasts, error_metrics, mase_scale
from ttm_model import Scaling


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


def test_baselines():
    values = np.arange(200, dtype=float).reshape(1, 200, 1)
    out = baseline_forecasts(values, np.array([0]), (np.array([0]), np.array([150])), horizon=3)
    np.testing.assert_array_equal(out["naive"][0, :, 0], [149, 149, 149])
    np.testing.assert_array_equal(out["seasonal_naive"][0, :, 0], [98, 99, 100])
    young = baseline_forecasts(values, np.array([120]), (np.array([0]), np.array([150])), horizon=2)
    np.testing.assert_array_equal(young["seasonal_naive"][0, :, 0], [149, 149])  # < 52 weeks: last value


def test_scaling_round_trips_and_unscale_clips_at_zero():
    scaling = Scaling(mean=np.array([[2.0], [10.0]]), scale=np.array([[1.0], [4.0]]), known=np.ones(2, bool))
    values = np.array([[[1.0], [5.0]], [[30.0], [2.0]]])  # (series, weeks, targets)
    np.testing.assert_allclose(scaling.apply(values)[1, :, 0], [5.0, -2.0])
    np.testing.assert_allclose(scaling.invert(scaling.apply(values), np.array([0, 1])), values)
    out = scaling.invert(np.array([[[-5.0], [1.0]]]), np.array([0]))
    np.testing.assert_array_equal(out[0, :, 0], [0.0, 3.0])
