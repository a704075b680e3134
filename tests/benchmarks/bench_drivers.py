"""How close TTM's driver path comes to the gbm's where drivers decide sales: a synthetic panel, the default run.

    python tests/benchmarks/bench_drivers.py [--calendar] [--volume 100] [--series 48] [--weeks 200] \\
        -- --PRETRAINED_MODEL=../shared/ttm-weights/ttm-90-30-ft-l1

Writes a panel (48 series x 200 weeks and its futuro.csv) whose weekly sales are proportional to the share of days
the store was open (`abertura`: most weeks 1, some 2/7..6/7, a few 0: a closure) and lifted by promotion days
(`promocao`: share of the week, lift up to 1.6x), on a yearly season; runs `ttm_model.py` on it with both as
CONTROL_COLUMNS (outputs in a temporary folder) and prints, per target, the mean backtest WAPE of fine_tuned, gbm,
zero_shot and the selected method, and the ratio fine_tuned / gbm (issue 22's target: <= 1.10). --calendar: the
drivers follow a calendar instead (drivers_panel).
Not collected by pytest (file name does not start with test_).
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ttm_model  # noqa: E402

logger = logging.getLogger("bench_drivers")


def drivers_panel(
    n_series: int = 48,
    n_weeks: int = 200,
    horizon: int = 26,
    seed: int = 0,
    calendar: bool = False,
    volume: float = 1.0,
) -> tuple:
    """(sales, future): weekly rows of produto_cat, uf_cat, vendas, faturamento, abertura, promocao. calendar: the
    drivers follow a calendar instead (promotions every other week for every series, lift up to 1.8x; closed on
    Sundays, a holiday week per state every ~6 weeks at 5/7 open; 10% of the series closed 4..12 weeks in a row).
    volume: multiplies every series' sales rate (median ~33 units a week): the Poisson noise, ~1 / sqrt(rate) of
    the level, shrinks, and what the drivers decide becomes most of what there is to forecast."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end="2025-12-28", periods=n_weeks + horizon, freq="W-SUN")
    weeks = np.arange(n_weeks + horizon)
    holidays = np.random.default_rng(seed + 1).random((6, len(weeks))) < 0.17  # per state (calendar only)
    frames = []
    for s in range(n_series):
        if calendar:
            open_share = np.where(holidays[s % 6], 5 / 7, 6 / 7)
            if rng.random() < 0.1:  # a refurbishment
                first = rng.integers(0, len(weeks) - 12)
                open_share[first : first + rng.integers(4, 13)] = 0.0
            promo = np.where(weeks % 2 == 0, 5 / 7, 0.0)
            lift = 0.8
        else:
            open_share = np.where(rng.random(len(weeks)) < 0.15, rng.integers(2, 7, len(weeks)) / 7, 1.0)
            open_share[rng.random(len(weeks)) < 0.02] = 0.0  # a closed week
            promo = np.where(rng.random(len(weeks)) < 0.12, rng.integers(1, 8, len(weeks)) / 7, 0.0)
            lift = 0.6
        season = 1 + rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * (weeks + rng.integers(52)) / 52.18)
        rate = volume * rng.lognormal(3.5, 0.6) * season * open_share * (1 + lift * promo)
        units = rng.poisson(np.clip(rate, 0, None)).astype(float)
        price = rng.uniform(5, 50)
        frames.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "produto_cat": f"P{s // 6:02d}",
                    "uf_cat": ("SP", "RJ", "MG", "RS", "PR", "BA")[s % 6],
                    "vendas": units,
                    "faturamento": np.round(units * price * (1 - 0.1 * promo), 2),
                    "abertura": np.round(open_share, 4),
                    "promocao": np.round(promo, 4),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    history = df[df["date"] <= dates[n_weeks - 1]]
    future = df[df["date"] > dates[n_weeks - 1]].drop(columns=["vendas", "faturamento"])
    return history, future


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calendar", action="store_true", help="drivers on a calendar (see drivers_panel)")
    ap.add_argument("--series", type=int, default=48, help="series in the panel (see drivers_panel)")
    ap.add_argument("--weeks", type=int, default=200, help="weeks of history per series (see drivers_panel)")
    ap.add_argument("--volume", type=float, default=1.0, help="sales rate multiplier (see drivers_panel)")
    ap.add_argument("args", nargs="*", help="settings passed to ttm_model.py (after --)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_drivers_"))
    history, future = drivers_panel(a.series, a.weeks, calendar=a.calendar, volume=a.volume)
    history.to_csv(work / "historico.csv", index=False)
    future.to_csv(work / "futuro.csv", index=False)
    metrics = ttm_model.main(
        [
            f"--DATA_PATH={work / 'historico.csv'}",
            f"--FUTURE_PATH={work / 'futuro.csv'}",
            "--CONTROL_COLUMNS=abertura,promocao",
            f"--RESULTS_DIR={work / 'results'}",
            f"--FINAL_MODEL_DIR={work / 'final'}",
            *a.args,
        ]
    )
    rows = {}
    for target, by_method in metrics["metrics"].items():
        wape = {m: by_method[m]["wape"] for m in ("fine_tuned", "gbm", "zero_shot")}
        chosen = metrics["selection"][target]
        rows[target] = wape | {
            "selected": chosen.get("candidate", chosen["method"]),
            "selected_wape": chosen["wape"],
            "fine_tuned / gbm": wape["fine_tuned"] / wape["gbm"],
        }
    logger.info("Mean backtest WAPE (run kept in %s):\n%s", work, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
