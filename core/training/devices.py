"""Choosing the device and reading how much memory the run uses."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

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


def device_total_memory(device: torch.device) -> int | None:
    """Bytes of memory a run on ``device`` can use at most, or None when this machine cannot tell.

    CUDA: the card's memory (None for an index the machine lacks).  MPS: what Metal recommends
    for one process (the memory is shared with the system).  CPU: the system's physical memory.
    """
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)  # torch >= 2.5
        if recommended is not None and torch.backends.mps.is_available():
            return int(recommended())
    # MPS shares the system's memory; other device types are not known here.
    return _system_memory() if device.type in ("cpu", "mps") else None


def device_description(device: torch.device) -> str:
    """A readable name of ``device``: ``cuda:0 (NVIDIA ...)``, ``mps (Apple GPU)``, ``CPU (system memory)``."""
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return f"cuda:{index} (absent)"
        return f"cuda:{index} ({torch.cuda.get_device_properties(index).name})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return "CPU (system memory)" if device.type == "cpu" else str(device)


def _system_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform reports it (Windows has no sysconf)
        return None


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


def _rss_now() -> int | None:
    """The process's resident memory now (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _rss_high_water() -> int | None:
    """The process's peak resident memory since the last reset (Linux VmHWM), else since it started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return memory_in_use(torch.device("cpu"))


class PeakMemory:
    """The peak memory one run takes, from its start: what the window shows beside the estimate.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak at the start (tensor bytes,
    what the estimate counts).  CPU: the growth of the process's peak resident memory over the run
    (Linux resets the high-water mark through ``/proc/self/clear_refs``; elsewhere the lifetime peak
    is used, so an earlier, larger peak hides this run's).  It holds the model, data, optimizer and
    activations, plus the allocator's and libraries' share.  MPS: the memory allocated now.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        elif device.type == "cpu":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the high-water mark of the resident set (Linux >= 4.0)
            except OSError:
                pass
            self.baseline = _rss_now() or 0

    def peak(self) -> int | None:
        """Bytes at the run's peak so far, or None when this machine cannot tell."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.device.type == "mps":
            return memory_in_use(self.device)
        high = _rss_high_water()
        return None if high is None else max(0, high - self.baseline)


def free_device_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a new run can start."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


@dataclass(frozen=True)
class DeviceInfo:
    """One device this machine can train on, as the window's device list shows it."""

    kind: str  # 'cpu', 'cuda' or 'mps'
    index: int | None  # CUDA: the device's index; None otherwise
    name: str  # 'NVIDIA H200', 'Apple GPU', 'CPU'
    total_memory: int | None  # bytes, or None when this machine cannot tell

    @property
    def device(self) -> str:
        """The ``training.device`` value that picks exactly this device ('cpu', 'cuda:1', 'mps')."""
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


def available_devices() -> list[DeviceInfo]:
    """The devices a run could use here: the CPU, each CUDA device by index, and Apple's GPU when
    MPS is there.  Reads only the devices' properties (no tensor is allocated); cheap enough for
    the UI thread once, not for every repaint."""
    found = [DeviceInfo("cpu", None, "CPU", _system_memory())]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            found.append(DeviceInfo("cuda", index, properties.name, int(properties.total_memory)))
    if torch.backends.mps.is_available():
        found.append(DeviceInfo("mps", None, "Apple GPU", device_total_memory(torch.device("mps"))))
    return found
