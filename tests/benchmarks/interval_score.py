"""How the 80% intervals of kept cutoff_check runs do on the real weeks: coverage, width and a proper score.

    python tests/benchmarks/interval_score.py ../shared/data/dunnhumby_frat/weekly_cov.csv RUN_DIR [RUN_DIR ...]

RUN_DIR: a folder kept by `../shared/tools/cutoff_check.py --keep RUN_DIR` (its results/previsoes.csv and
previsoes_totais.csv). Every forecast row with a real week in the data file is scored (all series, not only
cutoff_check's 186; each total against the real rows summed per level, as cutoff_check's totals line): per target, the
share of real weeks inside the bounds, the mean width divided by the mean actual, and the scaled CRPS of the two
bounds as quantiles 0.1 and 0.9 (utilsforecast.losses.scaled_crps over every row pooled, as metricas.json scores
the backtest's intervals; lower is better, and a narrower interval only wins if it still covers).
Not collected by pytest (file name does not start with test_).
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from utilsforecast.losses import scaled_crps

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import config  # noqa: E402

logger = logging.getLogger("interval_score")


def interval_figures(
    forecast: pd.DataFrame, real: pd.DataFrame, targets: tuple, keys: list[str]
) -> dict[str, dict[str, float]]:
    """{target: rows, coverage, width, scaled_crps} of forecast rows (bounds as previsoes.csv's) against the real rows
    with the same keys."""
    rows = forecast.merge(real[[*keys, *targets]], on=keys, suffixes=("", "_real"))
    figures = {}
    for target in targets:
        y, lower, upper = rows[f"{target}_real"], rows[f"{target}_lower"], rows[f"{target}_upper"]
        frame = pd.DataFrame({"unique_id": 0, "y": y, "lower": lower, "upper": upper})
        crps = scaled_crps(frame, models={"m": ["lower", "upper"]}, quantiles=np.array([0.1, 0.9]))["m"].iloc[0]
        figures[target] = {
            "rows": len(rows),
            "coverage": float(((y >= lower) & (y <= upper)).mean()),
            "width": float((upper - lower).mean() / y.abs().mean()),
            "scaled_crps": float(crps),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the data file with the real weeks (cutoff_check's --data)")
    parser.add_argument("runs", type=Path, nargs="+", help="folders kept by cutoff_check --keep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtypes = dict.fromkeys(config.ID_COLUMNS, str)
    real = pd.read_csv(args.data, dtype=dtypes)
    targets = tuple(config.TARGET_COLUMNS)
    for run in args.runs:
        forecast = pd.read_csv(run / "results" / "previsoes.csv", dtype=dtypes)
        forecast = forecast[forecast[config.DATE_COLUMN].isin(real[config.DATE_COLUMN])]
        _log(run, "series", interval_figures(forecast, real, targets, [config.DATE_COLUMN, *config.ID_COLUMNS]))
        totals = pd.read_csv(run / "results" / "previsoes_totais.csv", dtype={"nivel": str, "chave": str})
        weeks = real[real[config.DATE_COLUMN].isin(forecast[config.DATE_COLUMN])]
        for level, rows in totals.groupby("nivel", sort=False):
            chave = "total" if level == "total" else weeks[level].astype(str)
            summed = weeks.assign(chave=chave).groupby(["chave", config.DATE_COLUMN])[list(targets)].sum()
            _log(run, level, interval_figures(rows, summed.reset_index(), targets, ["chave", config.DATE_COLUMN]))


def _log(run: Path, level: str, figures: dict[str, dict[str, float]]) -> None:
    cells = (
        f"{t} ({f['rows']} rows): coverage {f['coverage']:.3f}, width {f['width']:.3f}, "
        f"scaled CRPS {f['scaled_crps']:.4f}"
        for t, f in figures.items()
    )
    logger.info("%s %s: %s", run, level, "; ".join(cells))


if __name__ == "__main__":
    main()
