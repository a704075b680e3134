"""Fine-tuning step time with model.PackedDropout in every dropout layer against its twin, torch.nn.Dropout.

    python tests/benchmarks/bench_train_step.py                 # 90-30 l1 TTM, 2 targets, 3 drivers, batch 64
    python tests/benchmarks/bench_train_step.py --drivers 0

Times forward, loss and backward of the pipeline's model (config.TRAINABLE_LAYERS and the driver blocks trainable)
in training mode on random windows, alternating the two dropouts, and prints the median of each and their ratio.
Not collected by pytest (file name does not start with test_).
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
from sales_forecast.model import DRIVER_BLOCKS, PackedDropout, build_model, unfreeze_only  # noqa: E402


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with torch.nn.Dropout where it has PackedDropout."""
    model = copy.deepcopy(model)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, PackedDropout):
                setattr(module, name, torch.nn.Dropout(child.p).train(child.training))
    return model


def step_seconds(model: torch.nn.Module, batch: dict) -> float:
    start = time.perf_counter()
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="../shared/ttm-weights/ttm-90-30-ft-l1")
    parser.add_argument("--drivers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    targets = 2
    packed = build_model(
        args.model,
        context_length=104,
        prediction_length=26,
        prefer_l1=True,
        num_channels=targets,
        num_drivers=args.drivers,
    )
    unfreeze_only(packed, (*config.TRAINABLE_LAYERS, *DRIVER_BLOCKS))
    models = {"PackedDropout": packed.train(), "torch.nn.Dropout": with_torch_dropout(packed).train()}
    torch.manual_seed(0)
    channels = targets + args.drivers
    batch = {
        "past_values": torch.randn(args.batch, packed.config.context_length, channels),
        "future_values": torch.randn(args.batch, packed.config.prediction_length, channels),
        "freq_token": torch.full((args.batch,), 9),
    }
    times = {name: [] for name in models}
    for _ in range(args.steps):
        for name, model in models.items():
            times[name].append(step_seconds(model, batch))
    medians = {name: statistics.median(seconds[1:]) for name, seconds in times.items()}
    for name, seconds in medians.items():
        print(f"{name}: {1000 * seconds:.1f} ms per training step (batch {args.batch}, {args.drivers} drivers)")
    print(f"ratio: torch.nn.Dropout / PackedDropout = {medians['torch.nn.Dropout'] / medians['PackedDropout']:.2f}")


if __name__ == "__main__":
    main()
