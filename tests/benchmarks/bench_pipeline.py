"""Does fine-tuning earn its time? The pipeline against zero-shot and classical methods, with speed and memory.

    pip install -r requirements-bench.txt
    python tests/benchmarks/bench_pipeline.py --data ../shared/data/dunnhumby_frat/weekly.csv \
        -- --PRETRAINED_MODEL=../shared/ttm-weights/ttm-90-30-ft-l1
    python tests/benchmarks/bench_pipeline.py --synthetic 2000x260 -- --PRETRAINED_MODEL=...

Runs `ttm_model.py` in-process with the given settings (after `--`, any --KEY=value of config.py; outputs go to
a temporary folder), then at exactly the same backtest origins statsforecast's AutoETS and AutoTheta (season 52).
Prints per target the mean over origins (and its spread) of WAPE and MASE of every method and blend, with ratios
against zero-shot and the best classical method, and each origin's WAPE; the
wall time of each phase; training windows/s against a bare training step on ready tensors (same model, layers,
batch); forecast series/s; peak RSS. --json writes everything to a file (the README tables come from it).
Not collected by pytest (file name does not start with test_).
"""

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_predict import synthetic_panel  # noqa: E402

import config  # noqa: E402
import ttm_model  # noqa: E402
from sales_forecast.evaluation import evaluate_methods, mase_scale, mean_over_origins  # noqa: E402
from sales_forecast.model import build_model, unfreeze_only, window_shape  # noqa: E402
from sales_forecast.panel import Panel, resample_weekly  # noqa: E402
from sales_forecast.sales_csv import read_sales_csv  # noqa: E402
from sales_forecast.settings import BacktestSettings  # noqa: E402
from sales_forecast.windows import Split, backtest_splits  # noqa: E402

CLASSICAL = ("seasonal_naive", "naive", "AutoETS", "AutoTheta")


def classical_forecasts(panel: Panel, split: Split, horizon: int) -> dict[str, np.ndarray]:
    """AutoETS and AutoTheta (season 52) from each test series' own history, clipped at 0 like the model's."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, AutoTheta

    series, cuts = split.test
    out = {}
    for c, target in enumerate(panel.targets):
        rows = [
            pd.DataFrame(
                {
                    "unique_id": s,
                    "ds": panel.dates[panel.start[s] : cut],
                    "y": panel.values[s, panel.start[s] : cut, c],
                }
            )
            for s, cut in zip(series, cuts)
        ]
        sf = StatsForecast(
            models=[AutoETS(season_length=52), AutoTheta(season_length=52)], freq=panel.dates.freq, n_jobs=-1
        )
        fc = sf.forecast(df=pd.concat(rows, ignore_index=True), h=horizon).sort_values(["unique_id", "ds"])
        for name in ("AutoETS", "AutoTheta"):
            by_series = fc.set_index("unique_id")[name]
            pred = np.stack([by_series.loc[s].to_numpy() for s in series])
            out.setdefault(name, np.zeros((len(series), horizon, len(panel.targets))))[..., c] = np.clip(pred, 0, None)
    return out


def bare_train_step(cfg, n_steps: int = 30) -> float:
    """Windows/s of forward + backward + AdamW step on ready tensors: the same model, trainable layers and batch."""
    device = "cuda" if torch.cuda.is_available() and not cfg.USE_CPU else "cpu"
    model = build_model(
        cfg.PRETRAINED_MODEL,
        context_length=cfg.CONTEXT_LENGTH,
        prediction_length=cfg.PREDICTION_LENGTH,
        prefer_l1=cfg.PREFER_L1_LOSS,
        num_channels=len(cfg.TARGET_COLUMNS),
    ).to(device)
    unfreeze_only(model, cfg.TRAINABLE_LAYERS)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, n = cfg.BATCH_SIZE, len(cfg.TARGET_COLUMNS)
    batch = {
        "past_values": torch.randn(b, model.config.context_length, n, device=device),
        "future_values": torch.randn(b, cfg.PREDICTION_LENGTH, n, device=device),
        "freq_token": torch.full((b,), window_shape(model)["freq_token"], device=device),
    }
    for step in range(n_steps + 5):
        if step == 5:  # after warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return n_steps * b / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="sales CSV (date, produto_cat, uf_cat, vendas, faturamento)")
    source.add_argument("--synthetic", help="SERIESxWEEKS synthetic panel, e.g. 2000x260")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-classical", action="store_true", help="skip AutoETS/AutoTheta (slow on big panels)")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.synthetic:
            n_series, n_weeks = map(int, args.synthetic.lower().split("x"))
            data = str(Path(tmp) / f"synthetic_{args.synthetic}.csv")
            for first in range(0, n_series, 2000):  # in chunks: the generator's memory stays out of the peak RSS
                chunk = synthetic_panel(min(2000, n_series - first), n_weeks, seed=first, first=first)
                chunk.to_csv(data, index=False, mode="a", header=first == 0)
        argv = [f"--DATA_PATH={data}", f"--RESULTS_DIR={tmp}/results", f"--FINAL_MODEL_DIR={tmp}/final", *overrides]
        cfg = config.resolve(argv, {})
        t0 = time.perf_counter()
        metrics = ttm_model.main(argv)
        wall = time.perf_counter() - t0
        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        bare = bare_train_step(cfg)

        sales = read_sales_csv(
            data, date_column=cfg.DATE_COLUMN, id_columns=cfg.ID_COLUMNS, target_columns=cfg.TARGET_COLUMNS
        )
        panel, _ = resample_weekly(
            sales, date_column=cfg.DATE_COLUMN, id_columns=cfg.ID_COLUMNS, target_columns=cfg.TARGET_COLUMNS
        )
        splits = backtest_splits(panel, backtest=BacktestSettings.of(vars(cfg)), horizon=cfg.PREDICTION_LENGTH)
        per_origin = [o["metrics"] for o in metrics["backtest"]["origins"]]
        if not args.no_classical:
            t1 = time.perf_counter()
            for split, overall in zip(splits, per_origin):
                series, horizon = split.test[0], cfg.PREDICTION_LENGTH
                _, extra = evaluate_methods(
                    panel.values[series[:, None], split.test_start + np.arange(horizon)],
                    classical_forecasts(panel, split, horizon),
                    scale=mase_scale(panel.values, panel.start, split.test_start)[series],
                    keys=panel.keys.iloc[series],
                    targets=panel.targets,
                )
                for target, by_method in extra.items():
                    overall[target].update(by_method)
            metrics["phase_seconds"]["classical (bench only)"] = round(time.perf_counter() - t1, 1)
        mean, spread = mean_over_origins(per_origin)

    origins = metrics["backtest"]["origins"]
    print(
        f"\n== {args.data or 'synthetic ' + args.synthetic}: {len(origins)} backtest origins "
        f"({', '.join(o['origin'] for o in origins)}), {torch.get_num_threads()} torch threads, settings "
        f"{' '.join(overrides) or '(defaults)'}"
    )
    for target, by_method in mean.items():
        classical = [m for m in CLASSICAL if m in by_method]
        best = min(classical, key=lambda m: by_method[m]["wape"])
        chosen = metrics["selection"][target]
        print(f"\n{target}: selected {chosen['method']}; best classical = {best}; WAPE mean over origins (sd)")
        print(
            f"  {'method':<38}{'WAPE':>7}{'(sd)':>8}{'MASE':>7}{'/zero-shot':>12}{'/best classical':>17}  per origin"
        )
        for method, m in by_method.items():
            each = " ".join(f"{origin[target][method]['wape']:.3f}" for origin in per_origin)
            print(
                f"  {method:<38}{m['wape']:>7.3f}{spread[target][method]['wape']:>8.3f}{m['mase']:>7.3f}"
                f"{m['wape'] / by_method['zero_shot']['wape']:>12.3f}{m['wape'] / by_method[best]['wape']:>17.3f}"
                f"  {each}"
            )
    trained = [o["training"] for o in origins if "train_windows_per_s" in o["training"]]
    windows_per_s = float(np.mean([t["train_windows_per_s"] for t in trained])) if trained else float("nan")
    print(
        f"\nwall time {wall:.0f} s; phases: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["phase_seconds"].items())
    )
    print(
        f"best epochs per origin {[t['best_epoch'] for t in (o['training'] for o in origins)]}, refit epochs "
        f"{metrics['refit_epochs']}; trainable {100 * metrics['trainable_fraction']:.1f}%"
    )
    print(
        f"training windows/s: pipeline {windows_per_s:.0f} (evaluation and checkpoints included), "
        f"bare step {bare:.0f}, ratio {windows_per_s / bare:.2f}"
    )
    print(f"forecast series/s (all series, with intervals, CSV written): {metrics['forecast_series_per_s']:.0f}")
    print(f"peak RSS {peak_rss_gb:.2f} GB")
    if args.json:
        result = {
            "data": args.data or f"synthetic {args.synthetic}",
            "settings": overrides,
            "wall_s": wall,
            "peak_rss_gb": peak_rss_gb,
            "bare_step_windows_per_s": bare,
            "mean_with_classical": mean,
            **metrics,
        }
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
