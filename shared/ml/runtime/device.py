"""The machine a model runs on: device, cores, and whether the CPU multiplies bf16 natively."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def pick_device(setting: str = "auto") -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def available_cores() -> int:
    """Cores this process may use (affinity, not the host's count, which containers over-report)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_torch_threads(threads: int = 0) -> int:
    """Use every core for intra-op work; inter-op parallelism only adds contention on small CPUs."""
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    return threads


FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Native bf16 dot products (AVX512-BF16, AMX): there bf16 is faster than fp32, elsewhere slower."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in FAST_BF16_CPU_FLAGS)
