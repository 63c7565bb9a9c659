"""The optimizer a run uses: AdamW, or bitsandbytes' 8-bit AdamW on CUDA (``training.optimizer``).

8-bit AdamW keeps the two moment estimates in 8 bits (block-wise quantised), about a quarter
of AdamW's optimizer memory, and needs CUDA and bitsandbytes.  Elsewhere the run is refused at
start, by name, with the fallback (``adamw``) rather than silently training with another optimizer.
"""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(name: str, groups: list[dict[str, Any]], *, lr: float, betas: tuple[float, float],
                    weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``name`` ('adamw' or 'adamw_8bit') over parameter ``groups``."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw_8bit":
        if device.type != "cuda":
            raise ValueError(f"training.optimizer = 'adamw_8bit' runs on CUDA only (bitsandbytes) and this run is on "
                             f"{device.type}; use adamw (training.optimizer = 'adamw')")
        try:
            import bitsandbytes
        except Exception as exc:  # not installed, or installed without a working CUDA build
            raise ValueError(f"training.optimizer = 'adamw_8bit' needs bitsandbytes, which does not import here "
                             f"({type(exc).__name__}: {exc}); pip install bitsandbytes, or use adamw "
                             "(training.optimizer = 'adamw')") from exc
        return bitsandbytes.optim.AdamW8bit(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"training.optimizer must be one of adamw, adamw_8bit, not {name!r}")
