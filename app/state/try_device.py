"""Where the Try tab runs a finished or opened model: the device and precision its run trained with.

A live run lends its own device and autocast (``LiveParts``); a model rebuilt from a run folder
gets the same from the run's config here, so a model trained in bfloat16 on CUDA is tried in
bfloat16 on CUDA, and one trained on the CPU stays on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from lora_studio.core import RunConfig, resolve_device

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TryDevice:
    """A device, the autocast to run under, and a note when the run's own choice was not available."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    precision: str = "float32"  # what autocast computes in ("float32": no autocast)
    note: str = ""  # e.g. "the run trained on cuda:1, which this machine lacks; trying on cpu"

    def describe(self) -> str:
        """``cpu`` / ``cuda:0, bfloat16`` — for the source line."""
        return str(self.device) if self.precision == "float32" else f"{self.device}, {self.precision}"


def autocast_for(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """The trainer's rule: autocast to bfloat16/float16 on CUDA only; float32 (no autocast) elsewhere."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if device.type != "cuda" or dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast("cuda", dtype=dtype)


def try_device_for(config: RunConfig | None) -> TryDevice:
    """The device and autocast ``config``'s run trained with (``training.device``, ``training.precision``);
    ``auto`` (CUDA, MPS, CPU) when there is no config, or when its device is missing on this machine."""
    if config is None:
        device = resolve_device("auto")
        return TryDevice(device, contextlib.nullcontext)
    note = ""
    try:
        device = resolve_device(config.training.device)
    except ValueError:  # trained on a GPU this machine lacks: try it on what is here
        device = resolve_device("auto")
        note = f"the run trained on {config.training.device}, which this machine lacks; trying on {device}"
    autocast = autocast_for(device, config.training.precision)
    precision = "float32" if autocast is contextlib.nullcontext else config.training.precision
    return TryDevice(device, autocast, precision, note)
