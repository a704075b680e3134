"""The report page (relatorio.html): one self-contained page in Portuguese of what ran, what it chose and forecast."""

import base64
import contextlib
import html
import logging
from pathlib import Path
from typing import Iterator

import pandas as pd

logger = logging.getLogger(__name__)

STYLE = """
body{font-family:system-ui,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.best{font-weight:bold;background:#e8f4e8}.note{color:#555;font-size:.9em}.warn{color:#8a4b00}
"""


SCALE_NAMES = {"series": "escala de cada série", "drivers": "escala por semana pelo fator dos direcionadores"}


class WarningLog(logging.Handler):
    """Keeps the run's warnings (data repairs, fallbacks) for the page."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _table(frame: pd.DataFrame, highlight: str | None = None) -> str:
    rows = []
    for index, row in frame.iterrows():
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        rows.append(f"<tr{' class=best' if index == highlight else ''}><td>{html.escape(str(index))}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".replace(",", "X").replace(".", ",").replace("X", ".")
    return str(value)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def _run_section(facts: dict, changed: dict, warnings: list[str]) -> str:
    items = "".join(f"<li>{html.escape(k)}: <b>{html.escape(str(v))}</b></li>" for k, v in facts.items())
    settings = ", ".join(f"{k}={v}" for k, v in changed.items()) or "nenhuma (todas no padrão)"
    notes = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in warnings[:20]) or "<li>nenhum</li>"
    more = f"<p class=note>e mais {len(warnings) - 20} avisos no log.</p>" if len(warnings) > 20 else ""
    return (
        f"<h2>O que rodou</h2><ul>{items}</ul><p>Configurações diferentes do padrão: {html.escape(settings)}</p>"
        f"<p>Avisos sobre os dados e a execução:</p><ul>{notes}</ul>{more}"
    )


def _choice_section(metrics: dict) -> str:
    rows = {}
    for target, chosen in metrics["selection"].items():
        rows[target] = {
            "método escolhido": chosen["method"],
            "WAPE médio no backtest": chosen["wape"],
            "÷ zero-shot": chosen["vs_zero_shot"],
            "segundo colocado": chosen["runner_up"],
            "WAPE do segundo": chosen["runner_up_wape"],
        }
    frame = pd.DataFrame(rows).T.rename_axis("meta")
    parts = [
        "<h2>Escolha por meta</h2><p>Por meta, vence o método de menor WAPE médio nas origens do backtest "
        "(semanas que os modelos não viram), cada origem pesando pelas janelas com que treinou (o modelo final treina "
        "em todas as semanas: as origens que treinaram em mais semanas são as mais parecidas com ele; a que não "
        "treinou não pesa); em empate, o zero-shot.</p>",
        _table(frame),
    ]
    for target in metrics["metrics"]:
        by_origin = {
            f"{o['origin']} (peso {100 * weight:.0f}%)": {m: v["wape"] for m, v in o["metrics"][target].items()}
            for o, weight in zip(metrics["backtest"]["origins"], metrics["backtest"]["origin_weights"])
        }
        frame = pd.DataFrame(by_origin)
        frame["média"] = [metrics["metrics"][target][m]["wape"] for m in frame.index]
        frame["÷ zero-shot"] = frame["média"] / frame.loc["zero_shot", "média"]
        candidate = metrics["selection"][target].get("candidate", metrics["selection"][target]["method"])
        parts.append(f"<h3>{html.escape(target)}: WAPE por método e origem</h3>")
        parts.append(_table(frame.sort_values("média").rename_axis("método"), highlight=candidate))
    return "".join(parts)


def _coverage_section(metrics: dict) -> str:
    level = metrics.get("interval_level", 0.8)
    parts = [f"<h2>Cobertura dos intervalos ({100 * level:.0f}%)</h2>"]
    if "interval_coverage" in metrics:
        covered = ", ".join(f"{t}: {100 * v:.1f}%" for t, v in metrics["interval_coverage"].items())
        parts.append(
            f"<p>Na última origem ({metrics['interval_coverage_origin']}), com intervalos calibrados só nas origens "
            f"anteriores, as semanas reais caíram dentro do intervalo em: {html.escape(covered)}.</p>"
        )
    if "interval_calibration_origins" in metrics:
        origins = html.escape(", ".join(metrics["interval_calibration_origins"]))
        parts.append(
            f"<p>Os intervalos da previsão foram calibrados nos erros das origens {origins} (a que previu as mesmas "
            "semanas um ano antes, quando ela teve treino e janelas suficientes; senão, o último ano de origens).</p>"
        )
    if "interval_scale_crps" in metrics:
        crps = "; ".join(f"{SCALE_NAMES[k]} {_fmt(v)}" for k, v in metrics["interval_scale_crps"].items())
        parts.append(
            f"<p>Erros dos intervalos medidos na {SCALE_NAMES[metrics['interval_scale']]}: a de menor CRPS escalado "
            f"na última origem ({html.escape(crps)}).</p>"
        )
    for target, by_method in metrics.get("intervals_by_method", {}).items():
        frame = pd.DataFrame(by_method).T.rename_axis("método")
        frame.columns = ["cobertura", "largura ÷ real médio", "CRPS escalado"]
        parts.append(
            f"<h3>{html.escape(target)}: intervalos por método</h3>{_table(frame.sort_values('CRPS escalado'))}"
        )
    return "".join(parts)


def _totals_section(totals: pd.DataFrame, figures: dict, plots: list[Path], date_column: str) -> str:
    parts = [
        "<h2>Totais</h2><p>Somas das previsões das séries (de baixo para cima: os totais por UF somam o total "
        "geral), com intervalos calibrados nos erros do backtest de cada nível.</p>"
    ]
    if figures:
        rows = {
            f"{nivel} / {target}": {
                "grupos": v["groups"],
                "WAPE": v["wape"],
                "viés": v["bias"],
                "cobertura": v.get("interval_coverage", float("nan")),
            }
            for nivel, by_target in figures.items()
            for target, v in by_target.items()
        }
        parts.append(_table(pd.DataFrame(rows).T.rename_axis("nível / meta")))
    overall = totals[totals["nivel"] == "total"].drop(columns=["nivel", "chave"]).set_index(date_column)
    overall.index = overall.index.strftime("%Y-%m-%d")
    parts.append("<h3>Total geral por semana</h3>" + _table(overall.rename_axis("semana")))
    parts += [_image(p) for p in plots]
    return "".join(parts)


def write_report(
    path: Path,
    *,
    facts: dict,
    changed: dict,
    warnings: list[str],
    totals: pd.DataFrame,
    date_column: str,
    plots_dir: Path,
    metrics: dict | None = None,
) -> None:
    """relatorio.html: what ran, and with metrics (training) the choice per target, the backtest by method and
    origin, accuracy by method, interval coverage; always the totals and the largest series' plots. Predict mode
    passes no metrics: a shorter page of forecasts and totals."""
    totals_plots = sorted(plots_dir.glob("totals_*.png"))
    series_plots = sorted(plots_dir.glob("forecast_*.png")) + sorted(plots_dir.glob("backtest_*.png"))
    sections = [_run_section(facts, changed, warnings)]
    if metrics:
        sections += [_choice_section(metrics), "<h2>Precisão por método</h2>"]
        if (plots_dir / "accuracy_by_method.png").exists():
            sections.append(_image(plots_dir / "accuracy_by_method.png"))
    sections.append(_totals_section(totals, (metrics or {}).get("totals", {}), totals_plots, date_column))
    sections.append("<h2>Maiores séries</h2>" + ("".join(_image(p) for p in series_plots) or "<p>sem gráficos</p>"))
    if metrics:
        sections.append(_coverage_section(metrics))
    title = "Previsão de vendas e faturamento" + ("" if metrics else " (modo predict)")
    page = (
        f'<!DOCTYPE html><html lang="pt-BR"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(sections)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    logger.info("Report page %s (%.0f KB)", path, path.stat().st_size / 1024)


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The warnings logged inside the block, as they happen (for the page)."""
    handler = WarningLog()
    logging.getLogger().addHandler(handler)
    try:
        yield handler.messages
    finally:
        logging.getLogger().removeHandler(handler)
