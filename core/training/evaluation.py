"""Loss and accuracy (classification) or perplexity (language modelling) on a validation set."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .task_loss import batch_variant_inputs, score_batch, to_device


@dataclass(frozen=True)
class EvalResult:
    """Target-weighted mean loss, and accuracy or perplexity."""

    loss: float
    accuracy: float | None
    perplexity: float | None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    *,
    task: str,
    forward_style: str,
    device: torch.device,
    batch_size: int = 64,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> EvalResult:
    """Score every example of ``dataset`` in eval mode (dropout off), then restore the model's mode."""
    was_training = model.training
    model.eval()
    loss_sum, targets, correct = 0.0, 0, 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            batch = to_device(batch, device)
            with autocast(), batch_variant_inputs(model, batch):
                score = score_batch(model, batch, task, forward_style)
            loss_sum += float(score.loss_sum)
            targets += score.targets
            correct += score.correct or 0
    finally:
        model.train(was_training)
    loss = loss_sum / max(targets, 1)
    if task == "causal-lm":
        return EvalResult(loss, None, math.exp(min(loss, 50.0)))  # capped: exp overflows for a diverged model
    return EvalResult(loss, correct / max(targets, 1), None)
