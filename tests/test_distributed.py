"""torchrun: two CPU processes (gloo) train one model through the HF Trainer's DDP, and only rank 0 writes."""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import ROOT, make_panel, run_args
from transformers import TrainerControl, TrainerState

import ttm_model
from sales_forecast.training import BestCheckpointOnEveryRank


def test_torchrun_two_processes_end_with_one_model_like_a_single_process(tmp_path, model_dir):
    data = tmp_path / "vendas.csv"
    make_panel().to_csv(data, index=False)
    extra = ("--BACKTEST_ORIGINS=1", "--NUM_TRAIN_EPOCHS=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launcher = subprocess.Popen(
        [*torchrun, "ttm_model.py", *run_args(tmp_path / "ddp", model_dir, data, *extra)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hang (ranks waiting on each other) fails here instead of blocking CI
        launcher.terminate()  # torchrun stops its ranks on SIGTERM; killing it would leave them running
        _, stderr = launcher.communicate()
        pytest.fail("torchrun did not finish in 300 s:\n" + stderr[-3000:])
    assert launcher.returncode == 0, stderr[-3000:]
    assert stderr.count("Distributed: rank 0 of 2 (gloo)") == 1
    assert stderr.count("Done in") == 1  # rank 1 logs warnings only
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


def test_every_rank_names_the_best_checkpoint_though_rank_0_writes_it_later(tmp_path):
    """The race behind transformers 4.56's hang at the end of DDP training: rank 1 looks for the best checkpoint
    before rank 0 has written it. Without BestCheckpointOnEveryRank it keeps None (and at the end of training skips
    the barrier rank 0 waits at)."""
    torch.multiprocessing.spawn(_save_in_rank, args=(tmp_path,), nprocs=2)
    best = str(tmp_path / "checkpoint-4")
    assert [(tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)] == [best, best]


def _save_in_rank(rank: int, folder) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    state = TrainerState(best_global_step=4)
    if rank == 0:
        time.sleep(2)  # rank 1 reaches on_save first, as when rank 0 is still writing the checkpoint
        (folder / "checkpoint-4").mkdir()
        state.best_model_checkpoint = str(folder / "checkpoint-4")  # what Trainer._save_checkpoint sets in rank 0
    BestCheckpointOnEveryRank().on_save(SimpleNamespace(output_dir=str(folder)), state, TrainerControl())
    (folder / f"rank-{rank}.txt").write_text(str(state.best_model_checkpoint))
    torch.distributed.destroy_process_group()
