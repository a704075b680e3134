"""Training: windows drawn per epoch, the OneCycleLR step count, the device of the window cuts, the epoch log."""

import logging

import numpy as np
import pytest
import torch
from conftest import HORIZON, settings_for

from sales_forecast.model import build_model
from sales_forecast.panel import resample_weekly
from sales_forecast.scaling import fit_and_scale
from sales_forecast.training import make_trainer, steps_per_epoch, window_device
from sales_forecast.windows import split_by_time

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")


def test_each_epoch_draws_other_windows(panel_df, model_dir, tmp_path):
    panel, _ = resample_weekly(panel_df, date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = split_by_time(panel, end=len(panel.dates), horizon=HORIZON, min_context=8, stride=1)
    _, data = fit_and_scale(panel, fit_end=split.fit_end, driver_effect=True)
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    settings = settings_for(["--NUM_TRAIN_EPOCHS=2", "--BATCH_SIZE=8", "--MAX_TRAIN_WINDOWS=40", "--USE_CPU=True"])
    trainer = make_trainer(
        model,
        data,
        train=split.train,
        train_end=split.valid_start,
        valid=None,
        horizon=HORIZON,
        out_dir=tmp_path / "t",
        settings=settings.train,
    )
    assert len(trainer.get_train_dataloader()) == 5  # 40 windows per epoch in batches of 8
    sampler = trainer._get_train_sampler()
    first, second = list(sampler), list(sampler)
    assert len(set(first)) == len(first) == 40 and first != second and max(first + second) < len(split.train[0])
    assert trainer.eval_dataset is None and trainer.args.eval_strategy == "no"  # no valid windows: no early stop


def test_validation_windows_are_a_fixed_sample_with_targets_unmasked(panel_df, model_dir, tmp_path):
    panel, _ = resample_weekly(panel_df, date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = split_by_time(panel, end=len(panel.dates), horizon=HORIZON, min_context=8, stride=1)
    _, data = fit_and_scale(panel, fit_end=split.fit_end, driver_effect=True)
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    settings = settings_for(["--MAX_VALID_WINDOWS=4", "--USE_CPU=True"]).train
    kw = {"train": split.train, "train_end": split.valid_start, "horizon": HORIZON, "settings": settings}
    trainer = make_trainer(model, data, valid=split.valid, out_dir=tmp_path / "t", **kw)
    assert len(trainer.eval_dataset) == 4 and len(split.valid[0]) == 6
    batch = trainer.eval_dataset.__getitems__(range(4))
    assert "future_observed_mask" not in batch and batch["future_values"].abs().sum() > 0
    train_batch = trainer.train_dataset.__getitems__(range(len(trainer.train_dataset)))
    weeks = trainer.train_dataset.cuts[:, None] + torch.arange(HORIZON)
    np.testing.assert_array_equal(train_batch["future_observed_mask"][..., 0], weeks < split.valid_start)


def test_each_epoch_is_one_log_line_and_nothing_is_printed(panel_df, model_dir, tmp_path, capsys, caplog):
    panel, _ = resample_weekly(panel_df, date_column="date", id_columns=IDS, target_columns=TARGETS)
    split = split_by_time(panel, end=len(panel.dates), horizon=HORIZON, min_context=8, stride=1)
    _, data = fit_and_scale(panel, fit_end=split.fit_end, driver_effect=True)
    model = build_model(model_dir, context_length=104, prediction_length=HORIZON, prefer_l1=True, num_channels=2)
    flags = ["--NUM_TRAIN_EPOCHS=2", "--BATCH_SIZE=8", "--MAX_TRAIN_WINDOWS=16", "--MAX_VALID_WINDOWS=4"]
    settings = settings_for([*flags, "--USE_CPU=True"]).train
    kw = {"train": split.train, "train_end": split.valid_start, "horizon": HORIZON, "settings": settings}
    for valid, name in ((split.valid, "with_valid"), (None, "without")):
        trainer = make_trainer(model, data, valid=valid, out_dir=tmp_path / name, **kw)
        with caplog.at_level(logging.INFO, logger="sales_forecast.training"):
            trainer.train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch ")]
    assert [line[: len("Epoch 1 of 2")] for line in lines] == ["Epoch 1 of 2", "Epoch 2 of 2"] * 2
    assert all("validation WAPE" in line for line in lines[:2]) and "validation" not in lines[2] + lines[3]
    assert "training loss nan" not in " ".join(lines)
    assert "{" not in capsys.readouterr().out  # no log dictionaries printed


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 64) == 16
    assert steps_per_epoch(1024, 64) == 16
    assert steps_per_epoch(1025, 64) == 17


@pytest.mark.parametrize("use_cpu, gather", [(True, True), (False, False)])
def test_windows_are_cut_on_the_cpu_without_a_gpu_or_gather_on_gpu(use_cpu, gather):
    settings = settings_for([f"--USE_CPU={use_cpu}", f"--GATHER_ON_GPU={gather}"]).train
    assert window_device(settings) == torch.device("cpu")
