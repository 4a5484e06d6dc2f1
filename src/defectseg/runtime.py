"""Where and how tensors run: the device, the dtype and autocast, CPU threads, seeding and DDP, in one place.

Training, evaluation, the Predictor's backends and the benchmark all resolve a device string with `pick_device`,
a dtype name with `parse_dtype` and enter `autocast` here, so "bf16 on this CPU" or "cuda:1" means the same thing
to every command.
"""

from __future__ import annotations

import functools
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DEVICE_PATTERN",
    "DTYPES",
    "Dist",
    "autocast",
    "check_device_name",
    "cpu_bf16",
    "default_threads",
    "init_distributed",
    "parse_dtype",
    "pick_device",
    "seed_everything",
]

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Names a command line or a config gives for a compute dtype; "fp32" is plain float32 (autocast off).
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_name(name: str) -> str | None:
    """What is wrong with a device string (None when it is auto, cpu, cuda or cuda:N); checks the form only, so a
    config written on a GPU machine still loads on a CPU one."""
    if isinstance(name, str) and DEVICE_PATTERN.fullmatch(name):
        return None
    return f"expected auto, cpu, cuda or cuda:N (N a GPU index >= 0), got {name!r}"


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; auto is CUDA when there is one. Asking for CUDA where
    there is none, or for a GPU index past the last, is a ValueError that says what to pass instead."""
    if isinstance(name, torch.device):
        return name
    problem = check_device_name(name)
    if problem:
        raise ValueError(f"device: {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for but CUDA is not available (torch {torch.__version__}, no "
                "usable GPU); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'fp32' | 'bf16' | 'fp16' -> torch dtype (None stays None: float32)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)} (comma-separated for several)")
    return DTYPES[name]


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: oneDNN runs bf16 convolutions with its own kernels (AVX-512 and up;
    AMX). A cheapmix-m training step at 128² then took 0.47x the float32 time with AMX, 0.6-0.7x with
    AVX-512 alone; on an AVX2-only CPU oneDNN falls back to reference bf16 code, 7x SLOWER than float32
    (docs/results.md, training speed)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_enabled(device: torch.device, dtype: torch.dtype | None) -> bool:
    """The one autocast rule: any low precision on CUDA; on the CPU bf16 only, and only where it pays (`cpu_bf16`)."""
    if dtype is None or dtype == torch.float32:
        return False
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16 and cpu_bf16())


def autocast(device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True) -> torch.autocast:
    """Autocast to `dtype` where `autocast_enabled` says so, else a disabled (no-op) context. Convolutions run in the
    low precision; the weights stay float32. cache_enabled=False for timing loops (no cast cache across calls)."""
    on = autocast_enabled(device, dtype)
    return torch.autocast(device.type, dtype=dtype if on else None, enabled=on, cache_enabled=cache_enabled)


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup cpusets), falling back to the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Dist:
    """This process's place in a DDP run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local)
