"""Choosing the device and reading how much memory the run uses."""

from __future__ import annotations

import os
import sys

import torch


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice that is absent is refused."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"training.device is {choice!r} but no CUDA device is available; use auto or cpu")
        index = int(choice.partition(":")[2] or local_rank)
        return torch.device("cuda", index)
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ValueError("training.device is 'mps' but Apple MPS is not available; use auto or cpu")
    return torch.device(choice)


def memory_in_use(device: torch.device) -> int | None:
    """Bytes allocated on the device (CUDA, MPS), or the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.current_allocated_memory())
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def free_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a new run can start."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def cpu_threads() -> int:
    """Threads torch uses on the CPU (reported by the benchmark)."""
    return torch.get_num_threads() or os.cpu_count() or 1
