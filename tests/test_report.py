"""The report page's coverage section: which interval scale the backtest chose, and why."""

from sales_forecast.report import _coverage_section


def test_the_coverage_section_names_the_chosen_interval_scale_and_both_scores():
    metrics = {
        "interval_level": 0.8,
        "interval_scale": "drivers",
        "interval_scale_crps": {"series": 0.18, "drivers": 0.17},
    }
    section = _coverage_section(metrics)
    assert "medidos na escala por semana pelo fator dos direcionadores" in section
    assert "escala de cada série 0,1800; escala por semana pelo fator dos direcionadores 0,1700" in section
    assert "medidos na" not in _coverage_section({"interval_level": 0.8, "interval_scale": "series"})  # one kind
