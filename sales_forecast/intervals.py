"""Prediction intervals: split-conformal bounds calibrated on backtest errors, in each series' own scale."""

import logging
import math

import numpy as np
from tsfm_public.toolkit.conformal import PostHocProbabilisticProcessor

logger = logging.getLogger(__name__)


def fit_intervals(y_true: np.ndarray, y_pred: np.ndarray, level: float) -> PostHocProbabilisticProcessor | None:
    """Split-conformal intervals on forecast errors in the series' own scale, or None with too few windows."""
    alpha = 1 - level
    if len(y_true) < math.ceil(1 / alpha):
        logger.warning(
            "Only %d backtest windows: too few for %.0f%% conformal intervals; none written", len(y_true), 100 * level
        )
        return None
    conformal = PostHocProbabilisticProcessor(
        quantiles=[alpha / 2, 1 - alpha / 2], method="conformal", nonconformity_score="absolute_error"
    )
    return conformal.train(y_true.astype(np.float64), y_pred.astype(np.float64))


def interval_bounds(
    conformal: PostHocProbabilisticProcessor, point: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds around point forecasts (original units), errors measured in each series' scale."""
    bounds = conformal.predict(point / scale[:, None]) * scale[:, None, :, None]
    return np.clip(bounds[..., 0], 0, None), np.clip(bounds[..., 1], 0, None)
