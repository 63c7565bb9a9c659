"""Training-time schedules shared by the variants that change their adapters between steps.

AdaLoRA's rank budget (Zhang et al. 2023, section 3.3) and gradual magnitude pruning
(Zhu & Gupta 2017, eq. 1) use the same cubic ramp: fast change early, while the
network can still recover, and a gentle approach to the final value::

    value
    v0 ─────┐
            ╲
             ╲__
                ‾‾‾──────── v1
    ────────┼──────────┼────► step
           t0          t1
"""

from __future__ import annotations


def cubic_ramp(step: float, start: float, end: float, initial: float, final: float) -> float:
    """``initial`` until ``start``, ``final`` from ``end``, and ``final + (initial-final)(1-p)^3`` between.

    ``p = (step - start) / (end - start)`` is the progress through the ramp.
    """
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def schedule_steps(start: float, end: float, total_steps: int) -> tuple[int, int]:
    """The (first, last) step counts of a ramp given as fractions of ``total_steps``."""
    return round(start * total_steps), round(end * total_steps)


def check_fraction_window(start_name: str, start: float, end_name: str, end: float) -> None:
    """Refuse a schedule window unless ``0 <= start < end <= 1``; the message names the bad field."""
    if not 0.0 <= start < 1.0:
        raise ValueError(f"{start_name} must be a fraction of training in [0, 1); got {start!r}")
    if not start < end <= 1.0:
        raise ValueError(f"{end_name} must be a fraction of training in ({start_name}={start}, 1]; got {end!r}")


def check_sparsity(name: str, value: object) -> None:
    """Refuse anything but a number in [0, 1) (1 would switch every entry off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (1 would switch every entry off); got {value!r}")


def check_positive_int(name: str, value: object) -> None:
    """Refuse anything but an integer >= 1 (booleans included, which Python counts as ints)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
