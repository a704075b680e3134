"""Training with the HF Trainer: windows drawn per epoch, AdamW + OneCycleLR, early stopping on WAPE, resume."""

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from sales_forecast.distributed import barrier, compute_device, is_main_process, world_size
from sales_forecast.model import window_shape
from sales_forecast.panel import Panel
from sales_forecast.scaling import ScaledPanel
from sales_forecast.settings import Settings, TrainSettings
from sales_forecast.windows import Windows, collate_windows, sample_windows, window_dataset

logger = logging.getLogger(__name__)


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch, as OneCycleLR must know them."""
    return math.ceil(n_windows / batch_size)


class WindowTrainer(Trainer):
    """HF Trainer whose epoch is `windows_per_epoch` training windows drawn at random (without replacement) from
    all of them, so that every week of the year starts windows however many series there are."""

    def __init__(self, *args, windows_per_epoch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.windows_per_epoch = windows_per_epoch
        self.remove_callback(PrinterCallback)  # it prints every log's dictionary to stdout; EpochLog logs instead
        self.add_callback(EpochLog)

    def _get_train_sampler(self, train_dataset: torch.utils.data.Dataset | None = None) -> torch.utils.data.Sampler:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return torch.utils.data.RandomSampler(dataset, num_samples=min(len(dataset), self.windows_per_epoch))


class EpochLog(TrainerCallback):
    """One log line per epoch, the progress of a training: its last logged training loss and, with validation
    windows, the validation WAPE. In place of transformers' PrinterCallback (its twin), which prints each log's
    dictionary to stdout, four per epoch; the figures per step stay in TensorBoard."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and args.eval_strategy == "no":
            logger.info("Epoch %d of %d: training loss %.4f", round(state.epoch), args.num_train_epochs, _loss(state))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and state.epoch:  # not the pretrained model's evaluation before training
            logger.info(
                "Epoch %d of %d: training loss %.4f, validation WAPE %.4f",
                round(state.epoch),
                args.num_train_epochs,
                _loss(state),
                metrics["eval_wape"],
            )


def _loss(state: TrainerState) -> float:
    """The training loss last logged (NaN before the first log)."""
    return next((entry["loss"] for entry in reversed(state.log_history) if "loss" in entry), math.nan)


class BestCheckpointOnEveryRank(TrainerCallback):
    """Under torchrun, every rank names the best checkpoint once rank 0 has written it.

    transformers 4.56's `Trainer._save_checkpoint` records the best checkpoint only if its folder already exists,
    and only rank 0 writes it: a rank that looks first keeps None, skips the barrier before loading the best model
    at the end of training, and rank 0 waits there forever (transformers PR #40923, released in 4.57, which
    granite-tsfm 0.3.2 does not accept). This repeats that check after a barrier, in the `on_save` that follows."""

    def on_save(self, args, state, control, **kwargs):
        if world_size() > 1 and state.best_global_step:
            barrier()
            best = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
            if os.path.isdir(best):
                state.best_model_checkpoint = best


def window_device(settings: TrainSettings) -> torch.device:
    """Where training windows are cut: on the GPU this process trains on (GATHER_ON_GPU), else on the CPU."""
    device = compute_device(settings.use_cpu)
    return device if settings.gather_on_gpu else torch.device("cpu")


def wape_metric(data: ScaledPanel, windows: Windows, horizon: int) -> Callable:
    """Trainer compute_metrics: WAPE in original units (forecasts clipped at 0) of the windows, mean over targets:
    the volume-weighted error users judge, for early stopping and the best checkpoint."""
    series, cuts = windows
    y = data.panel.values[series[:, None], cuts[:, None] + np.arange(horizon)]

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        forecast = data.scaling.invert(prediction.predictions[:, :horizon], windows)
        return {"wape": float(np.mean(np.abs(forecast - y).sum((0, 1)) / np.abs(y).sum((0, 1))))}

    return compute


def make_trainer(
    model: torch.nn.Module,
    data: ScaledPanel,
    *,
    train: Windows,
    train_end: int,
    valid: Windows | None,
    horizon: int,
    out_dir: Path,
    settings: TrainSettings,
    epochs: int | None = None,
) -> WindowTrainer:
    """HF Trainer on the train windows, their targets from week train_end on masked; with valid windows (a fixed
    sample of MAX_VALID_WINDOWS), early stopping and the best checkpoint on their WAPE. AdamW over trainable
    parameters, OneCycleLR over NUM_TRAIN_EPOCHS, TensorBoard logs. `epochs` stops sooner."""
    device, shape = window_device(settings), window_shape(model)
    datasets = {"train": window_dataset(data, train, **shape, horizon=horizon, target_end=train_end, device=device)}
    metric = None
    if valid is not None:
        valid = sample_windows(valid, settings.max_valid_windows, settings.seed)
        datasets["valid"] = window_dataset(data, valid, **shape, horizon=horizon, device=device)
        metric = wape_metric(data, valid, horizon)
    lr, batch_size, train_set = settings.learning_rate, settings.batch_size, datasets["train"]
    on_gpu = device.type == "cuda"  # windows cut there: no workers, nothing to pin
    if on_gpu and settings.num_workers:
        logger.info(
            "Windows cut on the GPU: NUM_WORKERS=%d unused (GATHER_ON_GPU=False uses it)", settings.num_workers
        )
    windows_per_epoch = settings.max_train_windows or len(train_set)
    steps = steps_per_epoch(min(len(train_set), windows_per_epoch), batch_size * world_size())
    evaluate = "epoch" if metric else "no"
    gpu = compute_device(settings.use_cpu).type == "cuda"
    args = TrainingArguments(
        output_dir=str(out_dir),
        run_name=out_dir.name,
        logging_dir=str(out_dir.parent / "logs" / out_dir.name),
        report_to=["tensorboard"],
        eval_strategy=evaluate,
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=max(1, steps // 4),
        load_best_model_at_end=metric is not None,
        metric_for_best_model="wape" if metric else None,
        greater_is_better=False,
        save_total_limit=2,
        restore_callback_states_from_checkpoint=True,  # an interrupted training resumes its early-stopping count
        num_train_epochs=epochs or settings.num_train_epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4 * batch_size,
        learning_rate=lr,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0 if on_gpu else settings.num_workers,
        use_cpu=not gpu,  # so that torchrun on CPUs trains with DDP over gloo
        label_names=["future_values"],
        remove_unused_columns=False,  # batches come whole from WindowDataset.__getitems__
        save_safetensors=True,
        disable_tqdm=True,  # progress: EpochLog's lines in the log
        dataloader_pin_memory=gpu and not on_gpu,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=settings.num_train_epochs, steps_per_epoch=steps
    )
    return WindowTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=datasets.get("valid"),
        optimizers=(optimizer, scheduler),
        data_collator=collate_windows,
        compute_metrics=metric,
        preprocess_logits_for_metrics=lambda outputs, labels: outputs[0],  # the forecast, not the hidden states
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience),
            BestCheckpointOnEveryRank(),
        ]
        if metric
        else [],
        windows_per_epoch=windows_per_epoch,
    )


def resume_checkpoint(out_dir: Path, fingerprint: str, fresh: bool) -> str | None:
    """Last checkpoint of an interrupted training with the same settings and data, else None (stale ones removed)."""
    stamp = out_dir / "run_fingerprint.txt"
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    same = stamp.is_file() and stamp.read_text() == fingerprint
    barrier()  # under torchrun every rank decides on the same files before rank 0 changes them
    if last and same and not fresh:
        logger.info("Resuming the interrupted run from %s (use --FRESH_START=True to start over)", last)
        return last
    if not is_main_process():
        barrier()
        return None
    for old in out_dir.glob("checkpoint-*"):
        shutil.rmtree(old)
    if last:
        logger.info(
            "Starting fresh: %s",
            "FRESH_START=True"
            if fresh
            else "settings or data changed since the checkpoints in %s were written" % out_dir,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    barrier()
    return None


def run_fingerprint(settings: Settings, panel: Panel) -> str:
    """sha256 of the settings and of the panel: a checkpoint resumes only the same run."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str).encode())
    digest.update(panel.values.tobytes())
    digest.update(panel.drivers.tobytes())
    digest.update(pd.util.hash_pandas_object(panel.keys, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def stopped_epoch(checkpoint: str | None) -> float | None:
    """The epoch at which the training that wrote `checkpoint` stopped (early stopping, or its last epoch); None when
    it was interrupted, or for no checkpoint."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    control = state.stateful_callbacks.get("TrainerControl", {}).get("args", {})
    return state.epoch if control.get("should_training_stop") else None


def fine_tune(trainer: Trainer, *, checkpoint: str | None) -> dict:
    """Train with early stopping on validation WAPE; return the training figures, with best_epoch 0 when no epoch
    beat the pretrained weights. Resuming a training that had stopped trains no further: it only loads the best
    checkpoint. The Trainer clears its stop flag when it resumes: without its early-stopping count it trained on to
    NUM_TRAIN_EPOCHS, with it at least one more epoch, and a rerun of a finished run could forecast with other
    weights than the run it repeated."""
    pretrained = trainer.evaluate()["eval_wape"]
    trainer.args.num_train_epochs = stopped_epoch(checkpoint) or trainer.args.num_train_epochs
    out = trainer.train(resume_from_checkpoint=checkpoint)
    state, runtime = trainer.state, out.metrics["train_runtime"]
    best_epoch = 0
    if state.best_global_step and state.best_metric < pretrained:  # a diverged run (NaN) never counts as better
        best_epoch = round(state.best_global_step / len(trainer.get_train_dataloader()))
    else:
        logger.warning(
            "Fine-tuning did not beat the pretrained model on validation (best WAPE %.4f vs %.4f); keeping the "
            "pretrained weights for this origin",
            state.best_metric,
            pretrained,
        )
    logger.info(
        "Trained %.0f epochs in %.0f s; validation WAPE pretrained %.4f, best %.4f (epoch %d)",
        state.epoch,
        runtime,
        pretrained,
        state.best_metric,
        best_epoch,
    )
    windows = min(len(trainer.train_dataset), trainer.windows_per_epoch)
    return {
        "epochs": state.epoch,
        "best_epoch": best_epoch,
        "valid_wape_pretrained": pretrained,
        "valid_wape_best": state.best_metric,
        "train_runtime_s": runtime,
        "train_windows_per_s": windows * state.epoch / runtime,
    }
