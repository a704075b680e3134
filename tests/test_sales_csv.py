"""The sales CSV and the bad-input corpus: every awkward file is either repaired with a warning or rejected in one
line; a large file split by series reads like the whole one; previsoes.csv written back as read."""

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, make_panel

from sales_forecast.forecast import forecast_frame
from sales_forecast.panel import resample_weekly
from sales_forecast.sales_csv import InputError, read_sales_csv, split_sales_csv, write_forecasts
from sales_forecast.settings import BacktestSettings
from sales_forecast.windows import backtest_splits

BACKTEST = BacktestSettings(backtest_origins=1, backtest_step=8, min_context_weeks=8, train_stride=1)
KW = {"date_column": "date", "id_columns": ("produto_cat", "uf_cat"), "target_columns": ("vendas", "faturamento")}


def _csv(df: pd.DataFrame, **kw) -> bytes:
    return df.to_csv(index=False, **kw).encode("utf-8")


def _base(n_weeks: int = 40) -> pd.DataFrame:
    return make_panel(n_products=2, ufs=("SP", "RJ"), n_weeks=n_weeks)


def _with(fn):
    df = _base()
    fn(df)
    return _csv(df)


def _daily() -> bytes:
    days = pd.date_range("2023-01-01", periods=7 * 40, freq="D")
    return _csv(pd.DataFrame({"date": days, "produto_cat": "1", "uf_cat": "SP", "vendas": 2.0, "faturamento": 5.0}))


def _monthly() -> bytes:
    months = pd.date_range("2020-01-31", periods=40, freq="ME")
    return _csv(pd.DataFrame({"date": months, "produto_cat": "1", "uf_cat": "SP", "vendas": 2.0, "faturamento": 5.0}))


def _brazilian(df: pd.DataFrame) -> bytes:
    out = df.assign(date=df["date"].dt.strftime("%d/%m/%Y"), faturamento=df["faturamento"] * 1000)
    return out.to_csv(index=False, sep=";", decimal=",").encode("utf-8")


def _thousands() -> bytes:
    df = _base()
    text = df.assign(
        faturamento=df["faturamento"].map(
            lambda v: f"{v * 1000:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
        )
    )
    return text.to_csv(index=False, sep=";").encode("utf-8")


def _mixed_dates() -> bytes:
    df = _base().astype({"date": str})
    df.loc[::2, "date"] = pd.to_datetime(df.loc[::2, "date"]).dt.strftime("%d/%m/%Y")
    return _csv(df)


def _latin1() -> bytes:
    df = _base().replace({"produto_cat": {"001": "Pão de Açúcar", "002": "Café Pilão"}})
    return df.to_csv(index=False).encode("latin-1")


GOOD = _csv(_base())
CORPUS = {  # name: (file bytes | None for special cases, expected outcome "ok" | "warn:<text>" | "error:<regex>")
    "empty file": (b"", "error:file is empty"),
    "blank lines only": (b"\n\n\n", "error:file is empty"),
    "header only": (b"date,produto_cat,uf_cat,vendas,faturamento\n", "error:header only, no data rows"),
    "one row": (b"date,produto_cat,uf_cat,vendas,faturamento\n2024-01-07,1,SP,3,9.5\n", "error:data cover 1 weeks"),
    "missing column": (_csv(_base().drop(columns="faturamento")), "error:missing column\\(s\\) 'faturamento'"),
    "misspelt column": (_csv(_base().rename(columns={"vendas": "venda"})), "error:'vendas' \\(found 'venda'\\?\\)"),
    "extra columns": (_csv(_base().assign(loja="x", obs="y")), "warn:ignoring extra column"),
    "semicolon separator": (_csv(_base(), sep=";"), "ok"),
    "tab separator": (_csv(_base(), sep="\t"), "ok"),
    "decimal comma + dd/mm/yyyy": (_brazilian(_base()), "warn:dd/mm/yyyy"),
    "thousands separator": (_thousands(), "ok"),
    "mixed date formats": (_mixed_dates(), "warn:dd/mm/yyyy"),
    "unparseable date": (GOOD.replace(b"2022-03-06", b"2022-13-45", 1), "error:'date' has unparseable dates at line"),
    "text in number column": (GOOD.replace(b",SP,", b",SP,abc", 1), "error:'vendas' has non-numeric values"),
    "NaN": (_with(lambda d: d.__setitem__("vendas", d["vendas"].where(d.index != 5))), "error:'vendas' has missing"),
    "negative sales": (
        _with(lambda d: d.loc.__setitem__((3, "vendas"), -4)),
        "error:'vendas' has negative values at line\\(s\\) 5",
    ),
    "returns (negative revenue)": (
        _with(lambda d: d.loc.__setitem__((7, "faturamento"), -10.0)),
        "error:'faturamento' has negative",
    ),
    "duplicate rows": (_csv(pd.concat([_base(), _base().head(3)])), "warn:3 duplicate"),
    "daily data": (_daily(), "ok"),
    "monthly data": (_monthly(), "error:looks monthly"),
    "unsorted rows": (_csv(_base().sample(frac=1, random_state=1)), "warn:out of date order"),
    "series of one week": (_csv(pd.concat([_base(), _base().tail(1).assign(uf_cat="AM")])), "warn:too new"),
    "all-zero series": (
        _csv(pd.concat([_base(), _base().head(40).assign(uf_cat="AC", vendas=0.0, faturamento=0.0)])),
        "warn:only zeros",
    ),
    "huge values": (_csv(_base().assign(faturamento=1e12)), "ok"),
    "product in one UF only": (_csv(pd.concat([_base(), _base().head(40).assign(produto_cat="009")])), "ok"),
    "UTF-8 with BOM": (b"\xef\xbb\xbf" + GOOD, "ok"),
    "Latin-1 accents": (_latin1(), "ok"),
    "Windows line endings": (GOOD.replace(b"\n", b"\r\n"), "ok"),
    "upper-case headers": (GOOD.replace(b"date,produto_cat", b"Date, Produto_Cat", 1), "ok"),
    "empty id": (GOOD.replace(b",SP,", b",,", 1), "error:'uf_cat' is empty at line"),
    "binary garbage": (bytes(range(256)) * 20, "error:missing column"),
    "datetime with time": (GOOD.replace(b"2022-01-02,", b"2022-01-02 00:00:00,"), "ok"),
    "spaces after separators": (GOOD.replace(b",", b", "), "ok"),
    "row with an extra field": (GOOD + b"2023-07-02,001,SP,3,9.5,x\n", "error:not a readable CSV"),
    "directory instead of file": (None, "error:is a folder, not a CSV file"),
    "missing file": (None, "error:file not found"),
}


def _load_split(path):
    df = read_sales_csv(str(path), **KW)
    panel, _ = resample_weekly(
        df, date_column="date", id_columns=KW["id_columns"], target_columns=KW["target_columns"], source=str(path)
    )
    backtest_splits(panel, backtest=BACKTEST, horizon=8)
    return df, panel


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus(name, tmp_path, caplog):
    content, expected = CORPUS[name]
    path = tmp_path / "vendas.csv"
    if name == "directory instead of file":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = hashlib.sha256(content).hexdigest() if content is not None else None
    caplog.set_level(logging.WARNING)
    kind, _, text = expected.partition(":")
    if kind == "error":
        with pytest.raises((InputError, FileNotFoundError), match=text) as err:
            _load_split(path)
        assert "\n" not in str(err.value)
        assert str(path) in str(err.value) or "data cover" in str(err.value)
    else:
        _load_split(path)
        if kind == "warn":
            assert text in caplog.text
    if content is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # input never modified


@pytest.mark.parametrize("name", [name for name, (content, _) in CORPUS.items() if content])
def test_split_file_reads_the_corpus_like_the_whole_file(name, tmp_path):
    """Predict mode splits a large file into parts by series, reading it in blocks: every row lands once, in its
    series' one part, and a bad file fails with the same message (line numbers of the whole file)."""
    path = tmp_path / "vendas.csv"
    path.write_bytes(CORPUS[name][0])
    try:
        whole = read_sales_csv(str(path), **KW)
    except InputError as err:
        with pytest.raises(InputError) as split_err:
            split_sales_csv(str(path), parts=3, folder=tmp_path / "parts", block_bytes=300, **KW)
        assert str(split_err.value) == str(err)
        return
    split = split_sales_csv(str(path), parts=3, folder=tmp_path / "parts", block_bytes=300, **KW)
    parts = [split.part(i).assign(part=i) for i in range(3)]
    rows = pd.concat(parts).sort_index()
    assert list(rows.index) == list(range(len(whole))) and split.rows == len(whole)
    ids = list(KW["id_columns"])
    pd.testing.assert_frame_equal(
        rows.drop(columns="part").astype(dict.fromkeys(ids, str)).reset_index(drop=True),
        whole.astype(dict.fromkeys(ids, str)),
    )
    assert (rows.groupby(ids, observed=True)["part"].nunique() == 1).all()
    assert (split.first_day, split.last_day) == (whole["date"].min(), whole["date"].max())


def test_corpus_is_large():
    assert len(CORPUS) >= 30


def test_brazilian_csv_values_and_text_ids(tmp_path):
    path = tmp_path / "br.csv"
    path.write_bytes(_brazilian(_base()))
    df = read_sales_csv(str(path), **KW)
    ref = _base()
    assert df["produto_cat"].iloc[0] == "001"  # text ids stay text, leading zeros kept
    np.testing.assert_allclose(df["faturamento"], ref["faturamento"] * 1000)
    assert (df["date"] == ref["date"]).all()


def test_thousands_separator_value(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(_thousands())
    np.testing.assert_allclose(read_sales_csv(str(path), **KW)["faturamento"], _base()["faturamento"] * 1000)


def test_latin1_names_survive(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes(_latin1())
    assert "Pão de Açúcar" in set(read_sales_csv(str(path), **KW)["produto_cat"])


def test_revenue_only_file(tmp_path):
    path = tmp_path / "rev.csv"
    path.write_bytes(_csv(_base().drop(columns="vendas")))
    df = read_sales_csv(str(path), **{**KW, "target_columns": ("faturamento",)})
    assert list(df.columns) == ["date", "produto_cat", "uf_cat", "faturamento"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_bytes(GOOD)
    path.chmod(0)
    with pytest.raises(InputError, match="cannot be read"):
        read_sales_csv(str(path), **KW)


@pytest.mark.parametrize("name", ["missing column", "negative sales", "monthly data"])
def test_cli_error_is_one_line_without_traceback(name, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(CORPUS[name][0])
    run = subprocess.run(
        [sys.executable, str(ROOT / "ttm_model.py"), f"--DATA_PATH={path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(path) in errors[0]


def test_cli_debug_shows_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(CORPUS["missing column"][0])
    run = subprocess.run(
        [sys.executable, str(ROOT / "ttm_model.py"), f"--DATA_PATH={path}", "--DEBUG=True"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "Traceback" in run.stderr and "InputError" in run.stderr


def test_latin1_character_after_the_sniffed_head(tmp_path):
    """The encoding is guessed from the first 64 KB; a Latin-1 byte further down is still read, not a traceback."""
    df = make_panel(n_products=40, ufs=("SP", "RJ", "MG"), n_weeks=60)
    body = _csv(df) + "2023-03-05,999,São Paulo,1,2\n".encode("latin-1")
    assert len(body) > 65536 and b"\xe3" in body[65536:]
    path = tmp_path / "late_latin1.csv"
    path.write_bytes(body)
    out = read_sales_csv(str(path), **KW)
    assert len(out) == len(df) + 1 and out["uf_cat"].iloc[-1] == "São Paulo"
    split = split_sales_csv(str(path), parts=2, folder=tmp_path / "parts", block_bytes=4096, **KW)
    rows = pd.concat([split.part(0), split.part(1)]).sort_index()
    assert len(rows) == len(df) + 1 and rows["uf_cat"].iloc[-1] == "São Paulo"


def test_text_ids_round_trip_to_the_forecast_file(tmp_path):
    """Ids with spaces, separators, quotes and leading zeros: read as written (stripped), written back the same."""
    df = _base(n_weeks=12)
    df["produto_cat"] = df["produto_cat"].map({"001": ' Café, "Pilão" ', "002": "007"})
    path = tmp_path / "ids.csv"
    path.write_bytes(_csv(df))
    sales = read_sales_csv(str(path), **KW)
    assert set(sales["produto_cat"]) == {'Café, "Pilão"', "007"}
    panel, _ = resample_weekly(
        sales, date_column="date", id_columns=KW["id_columns"], target_columns=KW["target_columns"]
    )
    horizon = 3
    point = np.random.default_rng(0).uniform(0, 100, (len(panel.keys), horizon, 2))
    dates = pd.date_range(panel.dates[-1], periods=horizon + 1, freq=panel.dates.freq)[1:]
    frame = forecast_frame(
        panel.keys,
        point,
        (point * 0.9, point * 1.1),
        dates=dates,
        targets=panel.targets,
        date_column="date",
        new_series=np.zeros(4, bool),
    )
    out = tmp_path / "previsoes.csv"
    out.write_text("old")
    write_forecasts(frame, out, date_column="date")
    back = pd.read_csv(out, dtype={"date": str, "produto_cat": str, "uf_cat": str})
    assert list(tmp_path.glob("*.tmp")) == []
    pd.testing.assert_frame_equal(back[["produto_cat", "uf_cat"]], frame[["produto_cat", "uf_cat"]].astype(str))
    assert list(back["date"][:horizon]) == ["2022-03-27", "2022-04-03", "2022-04-10"]  # weeks after 2022-03-20
    np.testing.assert_array_equal(back["vendas_upper"], (point[..., 0] * 1.1).round(4).ravel())
    assert back["new_series"].dtype == bool and not back["new_series"].any()
