"""What a training loop asks of the active adapter's variant, in one place.

The trainer (and any hand-written loop) calls these four functions and needs to
know nothing about variants::

    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr=1e-3, weight_decay=0.01))
    for step in range(total_steps):
        loss = task_loss(model(batch))
        extra = regularization_loss(model)
        (loss if extra is None else loss + extra).backward()
        optimizer.step(); optimizer.zero_grad()
        after_optimizer_step(model, step, total_steps)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapter.lifecycle import active_adapter, get_adapter_config
from ..variants import Variant, get_variant


def _active(model: nn.Module) -> tuple[str, Variant, Any] | None:
    adapter = active_adapter(model)
    if adapter is None:
        return None
    config = get_adapter_config(model, adapter)
    return adapter, get_variant(config.variant), config.settings()


def optimizer_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Parameter groups of every trainable parameter, split as the active variant asks (e.g. LoRA+)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("nothing to train: no parameter requires a gradient (attach an adapter first)")
    active = _active(model)
    if active is None:
        return [{"params": [p for _, p in named], "lr": lr, "weight_decay": weight_decay}]
    _, variant, settings = active
    return variant.param_groups(named, lr, weight_decay, settings)


def regularization_loss(model: nn.Module) -> torch.Tensor | None:
    """The active variant's extra loss term (e.g. AdaLoRA's orthogonality penalty), or None."""
    active = _active(model)
    return active[1].regularization(model, active[0], active[2]) if active else None


def after_optimizer_step(model: nn.Module, step: int, total_steps: int) -> None:
    """Run the active variant's between-steps hook (rank reallocation, pruning). ``step`` counts from 0."""
    active = _active(model)
    if active:
        active[1].after_step(model, active[0], active[2], step, total_steps)


def variant_summary(model: nn.Module) -> dict[str, Any]:
    """Facts the active variant reports after training (e.g. AdaLoRA's final ranks)."""
    active = _active(model)
    return active[1].summary(model, active[0], active[2]) if active else {}
