"""Learning-rate schedules: linear warm-up, then cosine, linear or constant.

A pure function of the step, so the "scheduler state" a checkpoint needs is the step
itself, and stretching a finished run ("extend by N steps") just means a new total.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (counting from 0)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"training.schedule must be cosine, linear or constant, got {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * decay
