"""torchrun: two CPU processes (gloo) train one model through the HF Trainer's DDP, and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pandas as pd
from conftest import ROOT, make_panel, run_args

import ttm_model


def test_torchrun_two_processes_end_with_one_model_like_a_single_process(tmp_path, model_dir):
    data = tmp_path / "vendas.csv"
    make_panel().to_csv(data, index=False)
    extra = ("--BACKTEST_ORIGINS=1", "--NUM_TRAIN_EPOCHS=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*torchrun, "ttm_model.py", *run_args(tmp_path / "ddp", model_dir, data, *extra)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang (ranks waiting on each other) fails here instead of blocking CI
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("Distributed: rank 0 of 2 (gloo)") == 1
    assert run.stderr.count("Done in") == 1  # rank 1 logs warnings only
    single = ttm_model.main(run_args(tmp_path / "one", model_dir, data, *extra))

    ddp_dir = tmp_path / "ddp"
    ours, theirs = (
        pd.read_csv(ddp_dir / "results" / "previsoes.csv"),
        pd.read_csv(tmp_path / "one/results/previsoes.csv"),
    )
    assert ours.shape == theirs.shape and list(ours.columns) == list(theirs.columns)
    assert ours["vendas"].notna().all()
    metrics = json.loads((ddp_dir / "results" / "metricas.json").read_text())
    assert set(metrics["selection"]) == set(single["selection"])
    # one final model, swapped in once: no staging or backup folder left by a second writer
    assert (ddp_dir / "final" / "manifest.json").is_file()
    assert sorted(p.name for p in ddp_dir.iterdir()) == ["final", "results"]
    # each rank trained on its share of every epoch's windows: half the optimizer steps of the single process
    assert _last_step(ddp_dir / "results" / "origin-1") * 2 == _last_step(tmp_path / "one" / "results" / "origin-1")


def _last_step(folder) -> int:
    return max(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
