"""End to end: train for one epoch, reload final_ttm_model/ to predict, keep artifacts safe, resume after a kill."""

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HORIZON, ROOT, make_panel, run_args, settings_for

import config
import ttm_model
from sales_forecast.artifacts import check_output_dirs, load_artifacts
from sales_forecast.forecast import method_parts
from sales_forecast.model import ShortAxisSoftmax
from sales_forecast.sales_csv import InputError


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "vendas.csv"
    make_panel().to_csv(data, index=False)
    metrics = ttm_model.main(run_args(tmp, model_dir, data))
    return tmp, data, metrics


def test_training_run_writes_everything(trained):
    tmp, data, metrics = trained
    final, results = tmp / "final", tmp / "results"
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor.pkl",
        "settings.json",
        "manifest.json",
        "conformal.pkl",
        "zero_shot",
    } <= set(os.listdir(final))
    assert {"config.json", "model.safetensors"} <= set(os.listdir(final / "zero_shot"))
    assert list(metrics["phase_seconds"]) == [
        "load",
        "preprocess",
        "model",
        "backtest",
        "refit",
        "forecast",
        "plots",
        "save",
    ]
    assert all(v >= 0 for v in metrics["phase_seconds"].values()) and metrics["phase_seconds"]["backtest"] > 0
    origins = metrics["backtest"]["origins"]
    assert [o["origin"] for o in origins] == ["2023-03-26", "2023-05-21"]  # BACKTEST_ORIGINS=2, the last at the end
    assert all(o["training"]["epochs"] == 1 and o["training"]["train_windows_per_s"] > 0 for o in origins)
    assert metrics["forecast_series_per_s"] > 0
    assert set(metrics["metrics"]) == set(metrics["selection"]) == {"vendas", "faturamento"}
    assert set(metrics["metrics"]["vendas"]) == set(config.METHODS)
    for target, chosen in metrics["selection"].items():  # the winner has the lowest mean backtest WAPE
        assert chosen["wape"] == min(m["wape"] for m in metrics["metrics"][target].values())
    assert list((results / "logs").rglob("events.out.tfevents*"))
    per_series = pd.read_csv(results / "metricas_por_serie.csv")
    assert len(per_series) == 2 * 6 * 2 * len(config.METHODS) and per_series["wape"].notna().all()
    assert set(per_series["origin"]) == {"2023-03-26", "2023-05-21"}
    assert {"forecast_01.png", "backtest_01.png", "accuracy_by_method.png"} <= set(os.listdir(results / "plots"))


def test_forecast_file(trained):
    tmp, data, metrics = trained
    future = pd.read_csv(tmp / "results" / "previsoes.csv", dtype={"produto_cat": str}, parse_dates=["date"])
    assert len(future) == 6 * HORIZON
    last = make_panel()["date"].max()
    for _, rows in future.groupby(["produto_cat", "uf_cat"]):
        assert list(rows["date"]) == list(pd.date_range(last, periods=HORIZON + 1, freq="W-SUN")[1:])
    assert set(future["produto_cat"]) == {"001", "002", "003"}  # text ids kept as given
    for target in ("vendas", "faturamento"):
        assert (future[f"{target}_lower"] <= future[target]).all() and (
            future[target] <= future[f"{target}_upper"]
        ).all()
        assert (future[f"{target}_lower"] >= 0).all()
    assert 0 <= metrics["interval_coverage"]["vendas"] <= 1 and metrics["interval_coverage_origin"] == "2023-05-21"
    assert metrics["interval_calibration_origins"]  # which origins calibrated the future's intervals


def test_predict_mode_reproduces_training_forecast(trained, tmp_path):
    tmp, data, _ = trained
    out = tmp_path / "pred"
    ttm_model.main(
        ["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={tmp / 'final'}", f"--RESULTS_DIR={out}"]
    )
    ours = pd.read_csv(out / "previsoes.csv")
    theirs = pd.read_csv(tmp / "results" / "previsoes.csv")
    pd.testing.assert_frame_equal(ours, theirs, rtol=1e-5, atol=2e-4)  # 4 decimals written: the last may flip


def test_predict_in_parts_equals_predict_at_once(trained, tmp_path):
    """A file above PREDICT_PART_ROWS is read, forecast and written in parts by series: the same forecasts, with the
    file's last week as every series' forecast origin even where a part's own rows end sooner."""
    tmp, _, _ = trained
    df = make_panel(n_products=4, ufs=("SP", "RJ", "MG"))
    late, early = df["produto_cat"].eq("002") & df["uf_cat"].eq("MG"), df["produto_cat"].eq("004")
    df = df[~(late & (df["date"] < "2022-06-01")) & ~(early & (df["date"] > "2023-05-01"))]
    path = tmp_path / "novos.csv"
    df.sample(frac=1, random_state=0).to_csv(path, index=False)  # rows of a series spread over the file
    argv = ["--MODE=predict", f"--DATA_PATH={path}", f"--FINAL_MODEL_DIR={tmp / 'final'}"]
    whole = ttm_model.main([*argv, f"--RESULTS_DIR={tmp_path / 'whole'}"])
    parts = ttm_model.main([*argv, f"--RESULTS_DIR={tmp_path / 'parts'}", "--PREDICT_PART_ROWS=200"])
    assert whole["n_series"] == parts["n_series"] == 12 and whole["n_new_series"] == parts["n_new_series"] == 6
    keys = ["produto_cat", "uf_cat", "date"]
    ours = pd.read_csv(tmp_path / "parts" / "previsoes.csv").sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(
        ours, pd.read_csv(tmp_path / "whole" / "previsoes.csv"), rtol=1e-5, atol=2e-4
    )  # batches; 4 decimals
    assert ours.groupby(keys[:2])["date"].min().eq(str((df["date"].max() + pd.Timedelta(weeks=1)).date())).all()
    written = {"previsoes.csv", "previsoes_totais.csv", "relatorio.html", "plots"}
    assert {path.name for path in (tmp_path / "parts").iterdir()} == written  # part files deleted


def test_predict_flags_unseen_series(trained, tmp_path):
    tmp, _, _ = trained
    df = make_panel()
    copy = df[(df["produto_cat"] == "001") & (df["uf_cat"] == "SP")]  # same UF: same holidays
    means = {}
    for factor in (1, 3):
        path = tmp_path / f"novos{factor}.csv"
        pd.concat([df, copy.assign(produto_cat="009", vendas=copy["vendas"] * factor)]).to_csv(path, index=False)
        out = tmp_path / f"out{factor}"
        argv = ["--MODE=predict", f"--DATA_PATH={path}", f"--FINAL_MODEL_DIR={tmp / 'final'}", f"--RESULTS_DIR={out}"]
        ttm_model.main(argv)
        future = pd.read_csv(out / "previsoes.csv")
        assert len(future) == 7 * HORIZON
        flags = future.groupby("produto_cat")["new_series"].all().to_dict()
        assert flags == {1: False, 2: False, 3: False, 9: True}
        means[factor] = future[future["produto_cat"] == 9]["vendas"].mean()
    assert means[3] == pytest.approx(3 * means[1], rel=1e-3)  # scaled on its own history, not on another series'


def test_predict_mode_errors(trained, tmp_path):
    tmp, data, _ = trained
    monthly = tmp_path / "monthly.csv"
    months = pd.date_range("2020-01-31", periods=30, freq="ME")
    pd.DataFrame({"date": months, "produto_cat": "001", "uf_cat": "SP", "vendas": 1.0, "faturamento": 2.0}).to_csv(
        monthly, index=False
    )
    with pytest.raises(InputError, match="looks monthly"):
        ttm_model.run_predict(
            settings_for(
                [
                    "--MODE=predict",
                    f"--DATA_PATH={monthly}",
                    f"--FINAL_MODEL_DIR={tmp / 'final'}",
                    f"--RESULTS_DIR={tmp_path}",
                ]
            ),
            warnings=[],
        )
    no_revenue = tmp_path / "no_rev.csv"
    make_panel().drop(columns="faturamento").to_csv(no_revenue, index=False)
    with pytest.raises(InputError, match="missing column\\(s\\) 'faturamento'"):
        ttm_model.run_predict(
            settings_for(
                [
                    "--MODE=predict",
                    f"--DATA_PATH={no_revenue}",
                    f"--FINAL_MODEL_DIR={tmp / 'final'}",
                    f"--RESULTS_DIR={tmp_path}",
                ]
            ),
            warnings=[],
        )


def test_forecasts_equal_granite_pipeline(trained, tmp_path):
    from tsfm_public import TimeSeriesForecastingPipeline

    tmp, _, _ = trained
    df = make_panel(n_weeks=120)  # longer than the model's 90-week context: no padding on either side
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    argv = ["--MODE=predict", f"--DATA_PATH={path}", f"--FINAL_MODEL_DIR={tmp / 'final'}", f"--RESULTS_DIR={tmp_path}"]
    ttm_model.main([*argv, "--FORECAST_METHOD=fine_tuned"])
    ours = pd.read_csv(tmp_path / "previsoes.csv", dtype={"produto_cat": str})
    models = load_artifacts(tmp / "final", method="fine_tuned").models
    assert any(isinstance(m, ShortAxisSoftmax) for m in models["fine_tuned"].modules())  # ready_to_run
    with open(tmp / "final" / "preprocessor.pkl", "rb") as f:
        tsp = pickle.load(f)  # granite-tsfm's own preprocessor, as saved
    pipe = TimeSeriesForecastingPipeline(
        models["fine_tuned"],
        feature_extractor=tsp,
        context_length=models["fine_tuned"].config.context_length,
        prediction_length=HORIZON,
        add_known_ground_truth=False,
        device="cpu",
    )
    theirs = pipe(df).groupby(["produto_cat", "uf_cat"]).tail(1).sort_values(["produto_cat", "uf_cat"])
    for target in ("vendas", "faturamento"):
        expected = np.clip(np.stack(theirs[target].to_numpy()), 0, None)
        np.testing.assert_allclose(ours[target].to_numpy().reshape(-1, HORIZON), expected, rtol=1e-4, atol=1e-3)


def test_failed_run_keeps_previous_model(trained, model_dir, monkeypatch):
    tmp, data, _ = trained
    before = _digest(tmp / "final")

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure after training")

    monkeypatch.setattr(ttm_model, "plot_results", boom)
    with pytest.raises(RuntimeError, match="injected"):
        ttm_model.main(run_args(tmp, model_dir, data, "--FRESH_START=True"))
    assert _digest(tmp / "final") == before
    bad = tmp / "bad.csv"
    bad.write_text("date,produto_cat\n2024-01-01,1\n")
    with pytest.raises(SystemExit):
        ttm_model.main(run_args(tmp, str(tmp / "final"), bad))
    assert _digest(tmp / "final") == before


def test_tampered_or_foreign_preprocessor_refused(trained, tmp_path):
    tmp, _, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "final", copy)
    with open(copy / "preprocessor.pkl", "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match=r"preprocessor.pkl: missing or changed .*sha256 mismatch"):
        load_artifacts(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(InputError, match="no manifest.json, so not a folder written by ttm_model.py"):
        load_artifacts(copy)


def test_model_folder_without_intervals_still_predicts(trained, tmp_path, caplog):
    tmp, data, _ = trained
    copy = tmp_path / "final"
    shutil.copytree(tmp / "final", copy)
    (copy / "conformal.pkl").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["sha256"]["conformal.pkl"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING)
    argv = ["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={copy}", f"--RESULTS_DIR={tmp_path}"]
    ttm_model.run_predict(settings_for(argv), warnings=[])  # main() would reset the log handlers caplog reads
    future = pd.read_csv(tmp_path / "previsoes.csv")
    assert "no conformal.pkl" in caplog.text
    assert {"vendas", "faturamento"} <= set(future.columns) and not future.filter(like="_lower").columns.size
    assert len(future) == 6 * HORIZON


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write there"):
        check_output_dirs([blocker / "results"], 1)
    with pytest.raises(InputError, match="MB free, MIN_FREE_DISK_MB="):
        check_output_dirs([tmp_path], 10**12)


def test_same_seed_same_backtest_and_forecast(trained, model_dir, tmp_path):
    tmp, data, metrics = trained
    again = ttm_model.main(run_args(tmp_path, model_dir, data))
    assert again["metrics"] == metrics["metrics"] and again["selection"] == metrics["selection"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "results" / "previsoes.csv"), pd.read_csv(tmp / "results" / "previsoes.csv")
    )


def test_resume_after_kill(tmp_path, model_dir):
    data = tmp_path / "vendas.csv"
    make_panel(n_products=10, ufs=("SP", "RJ", "MG"), n_weeks=120).to_csv(data, index=False)
    cmd = [sys.executable, str(ROOT / "ttm_model.py"), *run_args(tmp_path, model_dir, data, "--NUM_TRAIN_EPOCHS=3")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "results").glob("origin-*/checkpoint-*/trainer_state.json")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final").exists()
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming the interrupted run from" in rerun.stderr
    assert "checkpoint-" in rerun.stderr.split("Resuming the interrupted run from")[1].splitlines()[0]
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_metrics_file_equals_returned_metrics(trained):
    tmp, _, metrics = trained
    written = json.loads((tmp / "results" / "metricas.json").read_text())
    assert written == json.loads(json.dumps(metrics))


@pytest.mark.parametrize("ids", [("loja", "sku", "canal"), ("loja",)])
def test_synthetic_default_run_honours_renamed_columns(tmp_path, model_dir, monkeypatch, ids):
    monkeypatch.chdir(tmp_path)  # no dados/db_tratado-w.csv here: the synthetic panel
    argv = [
        f"--PRETRAINED_MODEL={model_dir}",
        "--DATE_COLUMN=semana",
        f"--ID_COLUMNS={','.join(ids)}",
        "--TARGET_COLUMNS=receita",
        "--NUM_TRAIN_EPOCHS=1",
        "--MAX_TRAIN_WINDOWS=64",
        "--PLOT_TOP_SERIES=1",
    ]
    metrics = ttm_model.main(argv)
    results = tmp_path / "results_ttm_model"
    future = pd.read_csv(results / "previsoes.csv", dtype=dict.fromkeys(ids, str))
    assert list(future.columns[: len(ids) + 1]) == ["semana", *ids] and "receita" in future
    assert set(metrics["metrics"]) == {"receita"} and len(future) == metrics["n_series"] * 26
    totals = pd.read_csv(results / "previsoes_totais.csv", dtype={"chave": str})
    assert list(totals["nivel"].unique()) == [*ids, "total"] and set(metrics["totals"]) == {*ids, "total"}
    for nivel in ids:
        expected = future.groupby([nivel, "semana"])["receita"].sum()
        got = totals[totals["nivel"] == nivel].set_index(["chave", "semana"])["receita"]
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-3)
    overall = totals[totals["nivel"] == "total"]
    np.testing.assert_allclose(overall["receita"], future.groupby("semana")["receita"].sum(), atol=1e-3)
    assert (overall["receita_lower"] <= overall["receita"]).all()
    assert (overall["receita"] <= overall["receita_upper"]).all()


def test_cuda_out_of_memory_is_one_line_with_a_smaller_batch(trained, model_dir, monkeypatch, capsys):
    tmp, data, _ = trained

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ttm_model, "fine_tune", oom)
    with pytest.raises(SystemExit) as exit_:
        ttm_model.main(run_args(tmp, model_dir, data, "--BATCH_SIZE=512", "--FRESH_START=True"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "ERROR ttm_model: CUDA out of memory with BATCH_SIZE=512" in err and "--BATCH_SIZE=256" in err
    assert "Traceback" not in err


def test_diverging_fine_tune_falls_back_to_the_pretrained_model(tmp_path, model_dir):
    data = tmp_path / "vendas.csv"
    make_panel().to_csv(data, index=False)
    metrics = ttm_model.main(run_args(tmp_path, model_dir, data, "--LEARNING_RATE=1000"))
    for origin in metrics["backtest"]["origins"]:
        assert origin["training"]["best_epoch"] == 0  # the guard kept the pretrained weights at every origin
        for by_method in origin["metrics"].values():
            assert by_method["fine_tuned"] == by_method["zero_shot"]
    assert metrics["refit_epochs"] == 0 and all(c["vs_zero_shot"] <= 1 for c in metrics["selection"].values())
    for chosen in metrics["selection"].values():  # ties go to zero-shot: fine_tuned only beside it (a 3-way blend)
        assert "fine_tuned" not in method_parts(chosen["method"]) or "zero_shot" in method_parts(chosen["method"])


class _Page(HTMLParser):
    """Headings, images and any external reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings, self.images, self.external, self._in_heading = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_heading = tag in ("h1", "h2")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith(("data:", "#")):
                self.external.append(attrs[name])

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data.strip())
            self._in_heading = False


def test_totals_file_sums_the_forecasts_per_level(trained):
    tmp, _, metrics = trained
    results = tmp / "results"
    series = pd.read_csv(results / "previsoes.csv", dtype={"produto_cat": str})
    totals = pd.read_csv(results / "previsoes_totais.csv", dtype={"chave": str})
    assert list(totals.columns[:3]) == ["nivel", "chave", "date"]
    for nivel in ("produto_cat", "uf_cat"):
        expected = series.groupby([nivel, "date"])["vendas"].sum().to_numpy()
        np.testing.assert_allclose(totals[totals["nivel"] == nivel]["vendas"].to_numpy(), expected, atol=1e-3)
    overall = totals[totals["nivel"] == "total"]
    np.testing.assert_allclose(overall["faturamento"], series.groupby("date")["faturamento"].sum(), atol=1e-3)
    assert (overall["faturamento_lower"] <= overall["faturamento"]).all()
    assert (overall["faturamento"] <= overall["faturamento_upper"]).all()
    assert set(metrics["totals"]) == {"produto_cat", "uf_cat", "total"}
    assert {"wape", "bias", "interval_coverage"} <= set(metrics["totals"]["uf_cat"]["vendas"])


def test_report_page_is_self_contained_with_every_section(trained):
    tmp, _, metrics = trained
    page, text = _Page(), (tmp / "results" / "relatorio.html").read_text(encoding="utf-8")
    page.feed(text)
    assert page.headings == [
        "Previsão de vendas e faturamento",
        "O que rodou",
        "Escolha por meta",
        "Precisão por método",
        "Totais",
        "Maiores séries",
        "Cobertura dos intervalos (80%)",
    ]
    assert page.external == [] and len(page.images) >= 4 and all(s.startswith("data:image/png") for s in page.images)
    assert "calibrados nos erros das origens " + ", ".join(metrics["interval_calibration_origins"]) in text


def test_predict_writes_totals_and_a_shorter_page(trained, tmp_path):
    tmp, data, _ = trained
    argv = ["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={tmp / 'final'}", f"--RESULTS_DIR={tmp_path}"]
    ttm_model.main(argv)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "previsoes_totais.csv"), pd.read_csv(tmp / "results" / "previsoes_totais.csv")
    )
    page = _Page()
    page.feed((tmp_path / "relatorio.html").read_text(encoding="utf-8"))
    assert page.headings == [
        "Previsão de vendas e faturamento (modo predict)",
        "O que rodou",
        "Totais",
        "Maiores séries",
    ]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_page_renders_in_a_headless_browser(trained, tmp_path):
    tmp, _, _ = trained
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (tmp / "results" / "relatorio.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = plt.imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.005  # text and plots, not a blank page
