"""The report page's choice and coverage sections: how each origin weighed in the choice, which interval scale the
backtest chose, and why."""

from sales_forecast.report import _choice_section, _coverage_section


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


def test_the_choice_section_gives_each_origin_its_weight_and_highlights_the_winner():
    by_method = {"zero_shot": {"wape": 0.30}, "gbm+fine_tuned": {"wape": 0.25}}
    metrics = {
        "selection": {
            "vendas": {
                "method": "gbm+fine_tuned",
                "wape": 0.25,
                "vs_zero_shot": 0.25 / 0.30,
                "runner_up": "zero_shot",
                "runner_up_wape": 0.30,
            }
        },
        "metrics": {"vendas": by_method},
        "backtest": {
            "origins": [{"origin": o, "metrics": {"vendas": by_method}} for o in ("2010-07-14", "2011-01-12")],
            "origin_weights": [1 / 3, 2 / 3],
        },
    }
    section = _choice_section(metrics)
    assert "2010-07-14 (peso 33%)" in section and "2011-01-12 (peso 67%)" in section
    assert "cada origem pesando pelas janelas com que treinou" in section
    assert "<tr class=best><td>gbm+fine_tuned</td>" in section  # the chosen row of the per-origin table
