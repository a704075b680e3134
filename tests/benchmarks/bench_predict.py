"""Predict-mode throughput: read CSV -> previsoes.csv, against the bare model forward on ready tensors.

    python tests/benchmarks/bench_predict.py --model ../shared/ttm-weights/ttm-90-30-ft-l1 --series 2000

Trains nothing: it saves the pretrained model as a final_ttm_model/ (with a fitted preprocessor) in a temporary
folder, writes a synthetic panel, then times `python ttm_model.py --MODE=predict` in-process (best of --repeats)
and the bare forward at several batch sizes, interleaved; the ratio uses the fastest batch size.
Not collected by pytest (file name does not start with test_).
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ttm_model  # noqa: E402


def synthetic_panel(n_series: int, n_weeks: int, seed: int = 0, first: int = 0) -> pd.DataFrame:
    """Poisson weekly sales with a yearly season; series `first` .. `first + n_series - 1` (27 UFs per product)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end="2025-12-28", periods=n_weeks, freq="W-SUN")
    level = rng.lognormal(3, 1, n_series)[:, None]
    season = 1 + 0.3 * np.sin(2 * np.pi * (np.arange(n_weeks)[None] + rng.integers(52, size=(n_series, 1))) / 52)
    units = rng.poisson(level * season).astype(float)
    return pd.DataFrame(
        {
            "date": np.tile(dates, n_series),
            "produto_cat": np.repeat([f"P{i // 27}" for i in range(first, first + n_series)], n_weeks),
            "uf_cat": np.repeat([f"U{i % 27}" for i in range(first, first + n_series)], n_weeks),
            "vendas": units.ravel(),
            "faturamento": (units * 9.9).ravel(),
        }
    )


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="../shared/ttm-weights/ttm-90-30-ft-l1")
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=260)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "novos.csv"
        synthetic_panel(args.series, args.weeks).to_csv(data, index=False)
        cfg = ttm_model.config.resolve([f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={tmp / 'final'}"], {})
        sales = ttm_model.read_sales_csv(
            str(data), date_column="date", id_columns=cfg.ID_COLUMNS, target_columns=cfg.TARGET_COLUMNS
        )
        panel, anchor = ttm_model.resample_weekly(
            sales, date_column="date", id_columns=cfg.ID_COLUMNS, target_columns=cfg.TARGET_COLUMNS
        )
        fit_end = np.full(len(panel.keys), len(panel.dates) - 52)
        tsp, drivers = (
            ttm_model.fit_group_scaler(panel, fit_end=fit_end),
            ttm_model.fit_driver_scaling(panel, fit_end=fit_end),
        )
        model = ttm_model.build_model(
            args.model, context_length=104, prediction_length=26, prefer_l1=True, num_channels=2
        )
        scaled = ttm_model.scale_panel(panel, tsp).values
        valid = (np.arange(len(panel.keys)), np.full(len(panel.keys), len(panel.dates) - 52))
        y_valid = scaled[valid[0][:, None], valid[1][:, None] + np.arange(26)]
        conformal = ttm_model.fit_intervals(
            y_valid, ttm_model.forecast_scaled(model, scaled, panel.start, valid, horizon=26), 0.8
        )
        selection = dict.fromkeys(cfg.TARGET_COLUMNS, "fine_tuned")  # one forward pass per series, as timed below
        settings = {**vars(cfg), "WEEK_ANCHOR": anchor, "SELECTION": selection, "HOLIDAY_COUNTRY": ""}  # no drivers
        models = {"fine_tuned": model, "zero_shot": model}
        ttm_model.save_artifacts(models, (tsp, drivers), conformal, settings, tmp / "final")

        argv = [
            "--MODE=predict",
            f"--DATA_PATH={data}",
            f"--FINAL_MODEL_DIR={tmp / 'final'}",
            f"--RESULTS_DIR={tmp / 'out'}",
            "--LOG_LEVEL=WARNING",
        ]
        model.eval()
        past = torch.randn(args.series, model.config.context_length, 2)
        mask = torch.ones_like(past, dtype=torch.bool)
        token = torch.full((args.series,), 9)

        def forward(batch: int) -> None:
            with torch.no_grad():
                for i in range(0, args.series, batch):
                    model(
                        past_values=past[i : i + batch],
                        past_observed_mask=mask[i : i + batch],
                        freq_token=token[i : i + batch],
                        return_loss=False,
                    )

        batches = (64, 128, 256, 1024)
        ttm_model.main(argv)  # warm-up (imports, first-call allocations)
        for batch in batches:
            forward(batch)
        runs, bare_runs = [], {batch: [] for batch in batches}
        for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both sides
            t0 = time.perf_counter()
            phases = ttm_model.main(argv)["phase_seconds"]
            runs.append((time.perf_counter() - t0, phases))
            for batch in batches:
                bare_runs[batch].append(_timed(forward, batch))
        end_to_end, phases = min(runs, key=lambda run: run[0])
        bare_by_batch = {batch: min(seconds) for batch, seconds in bare_runs.items()}
        best_batch = min(bare_by_batch, key=bare_by_batch.get)
        bare = bare_by_batch[best_batch]
    e2e_rate, bare_rate = args.series / end_to_end, args.series / bare
    print(f"series={args.series} weeks={args.weeks} torch_threads={torch.get_num_threads()}")
    print(f"predict mode end to end (CSV -> previsoes.csv): {end_to_end:.2f} s = {e2e_rate:.0f} series/s")
    print("  phases: " + ", ".join(f"{phase} {seconds:.3f} s" for phase, seconds in phases.items()))
    for batch, seconds in bare_by_batch.items():
        rate = args.series / seconds
        print(f"bare model forward on ready tensors, batch {batch:4d}: {seconds:.2f} s = {rate:.0f} series/s")
    print(f"fastest bare forward (batch {best_batch}):           {bare:.2f} s = {bare_rate:.0f} series/s")
    print(f"ratio end-to-end / bare forward: {e2e_rate / bare_rate:.2f} (target >= 0.80)")


if __name__ == "__main__":
    main()
