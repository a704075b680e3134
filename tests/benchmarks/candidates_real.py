"""Every backtest candidate of a run kept by cutoff_check.py, scored on the real weeks: what the selection left.

    python ../shared/tools/cutoff_check.py --data ../shared/data/dunnhumby_frat/weekly.csv --keep /tmp/cut -- ...
    python tests/benchmarks/candidates_real.py ../shared/data/dunnhumby_frat/weekly.csv /tmp/cut -- \\
        --HOLIDAY_COUNTRY=
    (with drivers, after `--`: the run's --CONTROL_COLUMNS=..., --FUTURE_PATH=/tmp/cut/futuro.csv and
    --HOLIDAY_COUNTRY=US)

For each candidate in DIR/results/metricas.json it runs predict mode on DIR/final with --FORECAST_METHOD forced (a
fitted blend: the weights fitted on every origin, per target), writes DIR/candidates/<method>/results/previsoes.csv
and scores it with cutoff_check.py --score-only. Logs per target the candidates by the run's mean backtest WAPE
(origins weighted as the selection weighs them), the plain mean over origins and the real-week WAPE; * marks the
one the run chose. Predict mode needs the gbm in the folder: a run that chose no gbm blend cannot score them.
Not collected by pytest.
"""

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger("candidates_real")
CUTOFF_CHECK = Path(__file__).resolve().parents[3] / "shared" / "tools" / "cutoff_check.py"


def real_wape(data: Path, run: Path, method: str, targets: list, settings: list) -> dict[str, float]:
    """{target: WAPE on the real weeks} of the kept run's final model forced to one method."""
    out = run / "candidates" / re.sub(r"[^a-z0-9_+.]", "_", method)
    if not (out / "results" / "previsoes.csv").exists():
        subprocess.run(
            [
                sys.executable,
                "ttm_model.py",
                "--MODE=predict",
                f"--DATA_PATH={run / 'historico.csv'}",
                f"--RESULTS_DIR={out / 'results'}",
                f"--FINAL_MODEL_DIR={run / 'final'}",
                f"--FORECAST_METHOD={method}",
                f"--TARGET_COLUMNS={','.join(targets)}",
                *settings,
            ],
            check=True,
            capture_output=True,
        )
    scored = (
        subprocess.run(
            [sys.executable, str(CUTOFF_CHECK), "--data", str(data), "--score-only", str(out)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {target: float(wape) for target, wape in re.findall(r"(\w+) WAPE ([0-9.]+) \(interval", scored)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the data file with the real weeks (cutoff_check's --data)")
    parser.add_argument("run", type=Path, help="a folder kept by cutoff_check --keep")
    parser.add_argument("settings", nargs="*", help="settings for predict mode (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metrics = json.loads((args.run / "results" / "metricas.json").read_text(encoding="utf-8"))
    targets, backtest = list(metrics["metrics"]), metrics["backtest"]
    scored: dict[str, dict[str, float]] = {}  # forced method -> {target: real-week WAPE}, each scored once
    real: dict[str, dict[str, float]] = {}
    for method in metrics["metrics"][targets[0]]:
        fitted = backtest["blend_weights"].get(method)
        for target in targets:
            name = fitted[target][-1] if fitted else method  # a fitted blend: the weights of every origin
            if name not in scored:
                scored[name] = real_wape(args.data, args.run, name, targets, args.settings)
            real.setdefault(method, {})[target] = scored[name][target]
    for target in targets:
        chosen = metrics["selection"][target]
        chosen = chosen.get("candidate", chosen["method"])
        lines = [f"{target}:", f"  {'candidate':<46} {'backtest':>8} {'plain':>8} {'real':>8}"]
        for method, figures in sorted(metrics["metrics"][target].items(), key=lambda kv: kv[1]["wape"]):
            plain = np.mean([o["metrics"][target][method]["wape"] for o in backtest["origins"]])
            mark = "*" if method == chosen else " "
            lines.append(f"{mark} {method:<46} {figures['wape']:>8.4f} {plain:>8.4f} {real[method][target]:>8.4f}")
        logger.info("%s", "\n".join(lines))


if __name__ == "__main__":
    main()
