"""Processes and devices: the one CPU/GPU choice, and torchrun's process group (which process writes, barriers)."""

import logging
import os

import torch

logger = logging.getLogger(__name__)


def compute_device(use_cpu: bool) -> torch.device:
    """Where this process trains and forecasts: its GPU when there is one and USE_CPU is False (under torchrun the
    local rank's, set by init_distributed), else the CPU."""
    if torch.cuda.is_available() and not use_cpu:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_size() -> int:
    """Processes training together (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the process that writes results and the model: rank 0 under torchrun, the only one otherwise."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process under torchrun; nothing otherwise."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def init_distributed(use_cpu: bool) -> None:
    """Under torchrun, join the process group (NCCL with GPUs, gloo on CPUs), one GPU per local rank; the HF Trainer
    then trains with DistributedDataParallel, each rank on its share of every epoch's windows."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        cuda = compute_device(use_cpu).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        logger.info(
            "Distributed: rank %d of %d (%s)", torch.distributed.get_rank(), world_size(), "nccl" if cuda else "gloo"
        )
