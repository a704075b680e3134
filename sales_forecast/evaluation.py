"""Accuracy in original units: error metrics, the MASE scale, metric tables, metricas.json and the plots.

Metric functions take plain arrays with the same parameter names everywhere (utilsforecast's habit).
"""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from sales_forecast.panel import Panel

logger = logging.getLogger(__name__)


def mase_scale(values: np.ndarray, start: np.ndarray, end: int) -> np.ndarray:
    """In-sample seasonal-naive-52 MAE per series and target before week `end` (lag 1 with < 53 weeks of history)."""
    lag = np.where(end - start >= 53, 52, 1)
    t = np.arange(values.shape[1])
    scale = np.full((len(values), values.shape[2]), np.nan)
    for lag_value in (1, 52):
        rows = lag == lag_value
        valid = (t[lag_value:] - lag_value >= start[rows, None]) & (t[lag_value:] < end)
        diff = np.abs(values[rows, lag_value:] - values[rows, :-lag_value]) * valid[..., None]
        scale[rows] = diff.sum(1) / np.maximum(valid.sum(1), 1)[:, None]
    return scale


def error_metrics(y: np.ndarray, pred: np.ndarray, scale: np.ndarray | float) -> dict[str, float | np.ndarray]:
    """MAE, RMSE, WAPE, MASE and bias over the last axis (or all of it when y is 1-D)."""
    err = pred - y
    total = np.abs(y).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mae = np.abs(err).mean(-1)
        return {
            "mae": mae,
            "rmse": np.sqrt((err**2).mean(-1)),
            "wape": np.abs(err).sum(-1) / total,
            "mase": mae / scale,
            "bias": err.sum(-1) / total,
        }


def evaluate_methods(
    y: np.ndarray, forecasts: dict[str, np.ndarray], *, scale: np.ndarray, keys: pd.DataFrame, targets: tuple
) -> tuple[pd.DataFrame, dict]:
    """Per-series and pooled metrics of each method against y (windows, horizon, targets), in original units.

    scale: the MASE scale per window and target; keys: the id columns of each window's series.
    """
    rows, overall = [], {}
    for method, pred in forecasts.items():
        for c, target in enumerate(targets):
            per_series = error_metrics(y[..., c], pred[..., c], scale[:, c])
            rows.append(keys.assign(target=target, method=method, **per_series))
            pooled = error_metrics(y[..., c].ravel(), pred[..., c].ravel(), 1.0)
            pooled["mase"] = float(np.nanmean(np.where(np.isfinite(per_series["mase"]), per_series["mase"], np.nan)))
            overall.setdefault(target, {})[method] = {k: float(v) for k, v in pooled.items()}
    return pd.concat(rows, ignore_index=True), overall


def mean_over_origins(per_origin: list[dict], weights: np.ndarray | None = None) -> tuple[dict, dict]:
    """Mean and standard deviation over origins of each target x method x metric (pooled per origin), each origin
    weighted by weights (None: equally)."""
    mean, spread = {}, {}
    for target, by_method in per_origin[0].items():
        for method, figures in by_method.items():
            for name in figures:
                values = np.array([origin[target][method][name] for origin in per_origin])
                average = np.average(values, weights=weights)
                mean.setdefault(target, {}).setdefault(method, {})[name] = float(average)
                deviation = np.sqrt(np.average((values - average) ** 2, weights=weights))
                spread.setdefault(target, {}).setdefault(method, {})[name] = float(deviation)
    return mean, spread


def metric_table(overall: dict) -> str:
    """The pooled metrics as a fixed-width text table, one row per target and method."""
    lines = [f"{'target':<12} {'method':<36} {'WAPE':>7} {'MASE':>7} {'MAE':>10} {'bias':>7}"]
    for target, by_method in overall.items():
        for method, m in by_method.items():
            lines.append(
                f"{target:<12} {method:<36} {m['wape']:>7.3f} {m['mase']:>7.3f} {m['mae']:>10.2f} {m['bias']:>+7.3f}"
            )
    return "\n".join(lines)


def write_metrics(metrics: dict, per_series: pd.DataFrame, results: Path) -> None:
    """metricas.json and metricas_por_serie.csv under results; each origin's pooled figures (step = origin number)
    and their mean (the selection's, origins weighted by their training windows) in TensorBoard, under
    results/logs/backtest."""
    from torch.utils.tensorboard import SummaryWriter

    per_series.to_csv(results / "metricas_por_serie.csv", index=False)
    (results / "metricas.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    writer = SummaryWriter(str(results / "logs" / "backtest"))
    tables = [
        (f"backtest/origin {o['origin']}", o["metrics"], i) for i, o in enumerate(metrics["backtest"]["origins"])
    ]
    for prefix, overall, step in [*tables, ("backtest/mean", metrics["metrics"], len(tables))]:
        for target, by_method in overall.items():
            for method, m in by_method.items():
                for name, value in m.items():
                    writer.add_scalar(f"{prefix}/{target}/{method}/{name}", value, step)
    writer.close()
    logger.info("Metrics in %s: metricas.json, metricas_por_serie.csv, TensorBoard logs/backtest", results)


def _plot_forecast(ax, rows: pd.DataFrame, target: str, date_column: str, level: float) -> None:
    ax.plot(rows[date_column], rows[target], label="forecast", color="tab:blue")
    if f"{target}_lower" in rows:
        ax.fill_between(
            rows[date_column],
            rows[f"{target}_lower"],
            rows[f"{target}_upper"],
            alpha=0.25,
            color="tab:blue",
            label=f"{100 * level:.0f}% interval",
        )


def plot_results(
    panel: Panel,
    future: pd.DataFrame,
    last_origin: pd.DataFrame,
    overall: dict,
    out_dir: Path,
    *,
    top_n: int,
    level: float,
) -> None:
    """PNG plots of the largest series by the last target: history + forecast + interval (forecast_NN.png) and how the
    last backtest origin did, its forecast and interval against the actual weeks (backtest_NN.png); and the mean
    backtest WAPE by method.

    future and last_origin: previsoes.csv-like frames, dates first (last_origin: for the last origin's test window).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    target, date_column, ids = panel.targets[-1], future.columns[0], list(panel.keys.columns)
    history, dates = panel.values[..., -1], panel.dates
    for rank, s in enumerate(np.argsort(-history.sum(1))[:top_n], start=1):
        key = panel.keys.iloc[s]
        title = f"{target}: " + ", ".join(f"{k}={v}" for k, v in key.items())
        shown = slice(max(panel.start[s], len(dates) - 104), None)
        for name, frame in (("forecast", future), ("backtest", last_origin)):
            rows = frame[(frame[ids] == key.to_numpy()).all(axis=1)]
            if rows.empty:
                continue
            fig, ax = plt.subplots(figsize=(10, 4))
            ax.plot(dates[shown], history[s, shown], label="actual", color="black")
            _plot_forecast(ax, rows, target, date_column, level)
            ax.set_title(title if name == "forecast" else f"{title} (backtest from {rows[date_column].min().date()})")
            ax.legend()
            fig.savefig(out_dir / f"{name}_{rank:02d}.png", dpi=90, bbox_inches="tight")
            plt.close(fig)
    methods = list(next(iter(overall.values())))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(overall)
    for i, (tgt, by_method) in enumerate(overall.items()):
        ax.bar(np.arange(len(methods)) + i * width, [by_method[m]["wape"] for m in methods], width, label=tgt)
    ax.set_xticks(np.arange(len(methods)) + width * (len(overall) - 1) / 2, methods, rotation=30, ha="right")
    ax.set_ylabel("mean backtest WAPE (lower is better)")
    ax.legend()
    fig.savefig(out_dir / "accuracy_by_method.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_totals(totals: pd.DataFrame, out_dir: Path, *, targets: tuple, date_column: str, level: float) -> list[Path]:
    """PNG plots of the overall total and of each group of the last id column (UFs by default, up to 12): forecast
    and interval per target (totals_<nivel>.png). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    levels = list(dict.fromkeys(totals["nivel"]))
    written = []
    for nivel in (levels[-1], levels[-2]) if len(levels) > 1 else levels:
        rows = totals[totals["nivel"] == nivel]
        groups = list(dict.fromkeys(rows["chave"]))[:12]
        fig, axes = plt.subplots(len(targets), 1, figsize=(10, 3.2 * len(targets)), squeeze=False)
        for ax, target in zip(axes[:, 0], targets):
            for group in groups:
                part = rows[rows["chave"] == group]
                line = ax.plot(part[date_column], part[target], label=group)[0]
                if f"{target}_lower" in part:
                    ax.fill_between(
                        part[date_column],
                        part[f"{target}_lower"],
                        part[f"{target}_upper"],
                        alpha=0.15,
                        color=line.get_color(),
                    )
            ax.set_title(f"{target}: {nivel} ({100 * level:.0f}% interval shaded)")
            ax.legend(fontsize=7, ncol=4)
        file = out_dir / f"totals_{nivel}.png"
        fig.savefig(file, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(file)
    return written
