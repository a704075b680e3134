"""The weekly panel: daily and weekly rows summed into weeks, gaps filled, equal to pandas' groupby + resample."""

import numpy as np
import pandas as pd
import pytest
from conftest import make_panel

from sales_forecast.panel import is_share, panel_until, resample_weekly

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")


def _panel(df):
    return resample_weekly(df, date_column="date", id_columns=IDS, target_columns=TARGETS)


def test_resample_daily_sums_into_weeks_and_fills_gaps():
    days = pd.date_range("2024-01-01", periods=28, freq="D")  # Monday..Sunday x 4
    df = pd.DataFrame({"date": days, "produto_cat": "A", "uf_cat": "SP", "vendas": 1.0, "faturamento": 2.0})
    df = df[(df["date"] < "2024-01-08") | (df["date"] >= "2024-01-15")]  # week 2 missing entirely
    panel, anchor = _panel(df)
    assert anchor == "W-SUN"
    assert list(panel.dates.strftime("%Y-%m-%d")) == ["2024-01-07", "2024-01-14", "2024-01-21", "2024-01-28"]
    np.testing.assert_array_equal(panel.values[0, :, 0], [7, 0, 7, 7])


def test_weekly_input_keeps_its_weekday():
    df = make_panel(n_weeks=10)
    df["date"] = df["date"] + pd.Timedelta(days=3)  # Wednesdays
    panel, anchor = _panel(df)
    assert anchor == "W-WED" and (panel.dates.dayofweek == 2).all()
    np.testing.assert_allclose(panel.values.sum(), df[list(TARGETS)].to_numpy().sum())


@pytest.mark.parametrize("anchor", ["auto", "W-WED"])
def test_resample_equals_pandas_groupby_resample(anchor, caplog):
    """Messy daily rows (shuffled, duplicated, gaps, late starters) give pandas' groupby + resample sums."""
    rng = np.random.default_rng(1)
    days = pd.date_range("2023-01-03", periods=400, freq="D")
    rows = pd.DataFrame(
        {
            "date": rng.choice(days, 3000),
            "produto_cat": rng.choice(["10", "2", "B"], 3000),
            "uf_cat": rng.choice(["SP", "RJ", "MG", "BA"], 3000),
            "vendas": rng.integers(0, 9, 3000).astype(float),
            "faturamento": rng.random(3000) * 100,
        }
    )
    rows = rows[~((rows["produto_cat"] == "B") & (rows["date"] < "2023-09-01"))]  # a series that starts late
    panel, used = resample_weekly(rows, date_column="date", id_columns=IDS, target_columns=TARGETS, anchor=anchor)
    expected = rows.set_index("date").groupby(list(IDS))[list(TARGETS)].resample(used).sum().reset_index()
    assert "duplicate" in caplog.text and "out of date order" in caplog.text
    assert panel.keys.to_dict("records") == expected[list(IDS)].drop_duplicates().to_dict("records")
    for s, key in enumerate(panel.keys.itertuples(index=False)):
        one = expected[(expected["produto_cat"] == key.produto_cat) & (expected["uf_cat"] == key.uf_cat)]
        t = panel.dates.get_indexer(one["date"])
        assert (t >= 0).all() and panel.start[s] == t.min()
        np.testing.assert_allclose(panel.values[s, t], one[list(TARGETS)].to_numpy())
        np.testing.assert_array_equal(panel.values[s, : t.min()], 0)
    assert panel.values.sum(axis=(0, 1)) == pytest.approx(rows[list(TARGETS)].sum().to_numpy())


def test_share_rule_tells_flags_and_shares_from_levels():
    values = np.array([[0.0, 0.5, 3.9, -1.0], [1.0, 0.25, 4.1, 2.0]])
    assert is_share(values).tolist() == [True, True, False, False]
    assert is_share(np.zeros((0, 2))).tolist() == [True, True]  # no rows seen: nothing says otherwise


def test_a_long_run_of_weeks_without_rows_is_missing_data_where_the_year_before_had_rows(caplog):
    """13 weeks without rows after a year with rows in those weeks: interpolated; 12 weeks, a seasonal
    break (no rows a year before either) and a series that stops early stay weeks without sales (0)."""
    rng = np.random.default_rng(0)
    weeks = pd.date_range("2022-01-02", periods=120, freq="W-SUN")
    drop = {"gap": range(70, 83), "short": range(70, 82), "seasonal": [*range(18, 32), *range(70, 84)], "ends": []}
    frames = []
    for name, dropped in drop.items():
        kept = np.setdiff1d(np.arange(110 if name == "ends" else 120), dropped)
        frames.append(
            pd.DataFrame(
                {
                    "date": weeks[kept],
                    "produto_cat": name,
                    "uf_cat": "SP",
                    "vendas": rng.integers(50, 150, len(kept)).astype(float),
                    "faturamento": rng.random(len(kept)) * 1000,
                    "abertura": rng.random(len(kept)),
                }
            )
        )
    rows = pd.concat(frames)
    columns = {"date_column": "date", "id_columns": IDS, "target_columns": TARGETS, "control_columns": ["abertura"]}
    with caplog.at_level("WARNING"):
        panel, _ = resample_weekly(rows, **columns, gap_weeks=13)
    by_name = {key: s for s, key in enumerate(panel.keys["produto_cat"])}
    gap = by_name["gap"]
    expected = rows[rows["produto_cat"] == "gap"].set_index("date").reindex(weeks)[[*TARGETS, "abertura"]]
    expected = expected.interpolate(limit_area="inside").to_numpy()
    np.testing.assert_allclose(panel.values[gap], expected[:, :2])
    np.testing.assert_allclose(panel.drivers[gap, :, 0], expected[:, 2])
    assert (panel.values[gap, 70:83] > 0).all()
    for name, dropped in [("short", range(70, 82)), ("seasonal", [*range(18, 32), *range(70, 84)])]:
        np.testing.assert_array_equal(panel.values[by_name[name], dropped], 0)
    np.testing.assert_array_equal(panel.values[by_name["ends"], 110:], 0)
    assert "1 series have 13 weeks without rows in runs of 13 weeks or more" in caplog.text
    unread, _ = resample_weekly(rows, **columns, gap_weeks=0)
    np.testing.assert_array_equal(unread.values[gap, 70:83], 0)


def test_a_data_gap_still_open_at_the_end_of_a_panel_cut_is_weeks_without_rows_there():
    weeks = pd.date_range("2022-01-02", periods=100, freq="W-SUN")
    kept = np.setdiff1d(np.arange(100), np.arange(70, 85))
    rows = pd.DataFrame(
        {
            "date": weeks[kept],
            "produto_cat": "A",
            "uf_cat": "SP",
            "vendas": 100.0,
            "faturamento": 500.0,
            "abertura": 0.9,  # a share: 0 in a week without rows
            "preco": 5.0 + np.arange(len(kept)),  # a level: carried into such weeks
        }
    )
    columns = {"date_column": "date", "id_columns": IDS, "target_columns": TARGETS}
    panel, _ = resample_weekly(rows, **columns, control_columns=["abertura", "preco"], gap_weeks=13)
    without, _ = resample_weekly(rows, **columns, control_columns=["abertura", "preco"], gap_weeks=0)
    np.testing.assert_array_equal(panel.values[0, 70:85], [[100.0, 500.0]] * 15)  # between weeks with rows
    cut = panel_until(panel, 78)  # an origin inside the gap: its rows come back at week 85, after it
    np.testing.assert_array_equal(cut.values, without.values[:, :78])
    np.testing.assert_array_equal(cut.drivers, without.drivers)
    assert not cut.gap.any() and panel.gap[0, 70:85].all()
    closed = panel_until(panel, 90)  # after the gap: interpolated
    np.testing.assert_array_equal(closed.values, panel.values[:, :90])
