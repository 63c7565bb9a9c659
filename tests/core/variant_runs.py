"""A tiny regression problem and a plain training loop for the tests of variants with training hooks.

The loop is the one ``training_hooks`` documents: task loss plus the variant's
regularisation, an optimizer step, then the variant's after-step hook.  ``observe``
is called after the hook, so a test can watch masks and budgets step by step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lora_studio.core import (
    LoraConfig,
    after_optimizer_step,
    attach,
    optimizer_param_groups,
    regularization_loss,
)


def regression_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(base MLP 16→32→8, inputs, targets): the targets come from the base plus a rank-2 change per layer."""
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    g = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(128, 16, generator=g)
    with torch.no_grad():
        h = torch.tanh(base[0](x) + 0.5 * x @ torch.randn(16, 2, generator=g) @ torch.randn(2, 32, generator=g) / 4)
        y = base[2](h) + 0.5 * h @ torch.randn(32, 2, generator=g) @ torch.randn(2, 8, generator=g) / 6
    return base, x, y


def attached(
    variant: str, r: int = 4, seed: int = 0, **settings: object
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The regression problem's base with ``variant`` attached to both linear layers."""
    base, x, y = regression_problem(seed)
    config = LoraConfig(r=r, alpha=2 * r, targets=["0", "2"], variant=variant, variant_settings=dict(settings))
    return attach(base, config), x, y


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float = 1e-2,
    observe: Callable[[int], None] | None = None,
) -> list[float]:
    """Train with AdamW for ``steps`` steps; return the task loss of every step."""
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr=lr))
    losses = []
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        extra = regularization_loss(model)
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
        optimizer.zero_grad()
        after_optimizer_step(model, step, steps)
        losses.append(loss.item())
        if observe is not None:
            observe(step)
    return losses
