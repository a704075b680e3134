"""Shared fixtures: a small deterministic weekly panel and a TTM folder (real weights, or a tiny random TTM)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_MODEL = ROOT.parent / "shared" / "ttm-weights" / "ttm-90-30-ft-l1"
HORIZON = 8
IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")  # make_panel's columns


def weekly(df: pd.DataFrame):
    """make_panel's rows resampled as the pipeline does: (panel, anchor)."""
    from sales_forecast.panel import resample_weekly

    return resample_weekly(df, date_column="date", id_columns=IDS, target_columns=TARGETS)


def settings_for(argv: list[str]):
    """The typed settings main() builds from these command-line settings (no environment)."""
    import config
    from sales_forecast.settings import Settings

    return Settings.of(vars(config.resolve(argv, {})))


def make_panel(n_products: int = 3, ufs=("SP", "RJ"), n_weeks: int = 80, seed: int = 0) -> pd.DataFrame:
    """Weekly sales with season, trend and noise; product ids as text codes."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2022-01-02", periods=n_weeks, freq="W-SUN")
    rows = []
    for p in range(n_products):
        for u, uf in enumerate(ufs):
            level = 50 + 30 * p + 10 * u
            units = level * (1 + 0.3 * np.sin(2 * np.pi * np.arange(n_weeks) / 52)) + rng.normal(0, 5, n_weeks)
            units = np.round(np.clip(units, 0, None))
            rows.append(
                pd.DataFrame(
                    {
                        "date": dates,
                        "produto_cat": f"00{p + 1}",
                        "uf_cat": uf,
                        "vendas": units,
                        "faturamento": np.round(units * (3.5 + p), 2),
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def panel_df() -> pd.DataFrame:
    return make_panel()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """The real 90-30 l1 TTM when ../shared has it, else a tiny random TTM saved like a pretrained one."""
    if SHARED_MODEL.is_dir():
        return str(SHARED_MODEL)
    from tsfm_public import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    cfg = TinyTimeMixerConfig(
        context_length=90,
        prediction_length=30,
        patch_length=9,
        patch_stride=9,
        d_model=16,
        num_layers=2,
        decoder_d_model=8,
        decoder_num_layers=1,
        resolution_prefix_tuning=True,
        frequency_token_vocab_size=10,
        loss="mae",
        scaling="std",
    )
    folder = tmp_path_factory.mktemp("tiny_ttm")
    TinyTimeMixerForPrediction(cfg).save_pretrained(folder)
    return str(folder)


def run_args(tmp_path: Path, model_dir: str, data: Path, *extra: str) -> list[str]:
    """Command-line settings for a short CPU run writing under tmp_path."""
    return [
        f"--DATA_PATH={data}",
        f"--PRETRAINED_MODEL={model_dir}",
        f"--PREDICTION_LENGTH={HORIZON}",
        "--MIN_CONTEXT_WEEKS=8",
        "--NUM_TRAIN_EPOCHS=1",
        "--BATCH_SIZE=32",
        "--USE_CPU=True",
        f"--RESULTS_DIR={tmp_path / 'results'}",
        f"--FINAL_MODEL_DIR={tmp_path / 'final'}",
        "--PLOT_TOP_SERIES=1",
        "--BACKTEST_ORIGINS=2",
        "--MAX_TRAIN_WINDOWS=256",
        "--GBM_TREES=50",
        "--HOLIDAY_COUNTRY=",  # no drivers unless a test sets them (tests/test_drivers.py)
        *extra,
    ]
