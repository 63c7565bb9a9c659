"""Forward a batch and score it: summed cross-entropy, how many targets, how many right.

Losses are *sums* over targets so that micro-batches and processes can be combined
exactly: the trainer divides by the global number of targets of the step (examples
for classification, unmasked next tokens for language modelling).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..adapter.lifecycle import variant_inputs
from ..data.collate import IGNORE_INDEX, MODEL_INPUTS, batch_tokens


@dataclass
class BatchScore:
    """The summed loss of a batch (a graph to backpropagate), its target count and correct count."""

    loss_sum: torch.Tensor
    targets: int
    correct: int | None  # classification only
    tokens: int | None  # text tasks: tokens in the batch (for tokens/second)


def count_targets(batch: dict[str, torch.Tensor], task: str) -> int:
    """Targets a batch scores: examples, or next-token labels that are not masked."""
    labels = batch["labels"]
    if task == "causal-lm":
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return int(labels.shape[0])


def model_logits(model: nn.Module, batch: dict[str, torch.Tensor], forward_style: str) -> torch.Tensor:
    """The model's logits for a batch: ``model(pixel_values)`` or ``model(**inputs).logits``."""
    if forward_style == "pixels":
        out = model(batch["pixel_values"])
    else:
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    return out.logits if hasattr(out, "logits") else out


def score_batch(model: nn.Module, batch: dict[str, torch.Tensor], task: str, forward_style: str) -> BatchScore:
    """Forward ``batch`` (already on the device) and return its summed loss and counts."""
    logits = model_logits(model, batch, forward_style)
    labels = batch["labels"]
    tokens = batch_tokens(batch)  # a packed batch's 4D mask does not sum to its tokens
    if task == "causal-lm":
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]
        loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return BatchScore(loss, int((targets != IGNORE_INDEX).sum()), None, tokens)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    correct = int((logits.argmax(-1) == labels).sum())
    return BatchScore(loss, int(labels.shape[0]), correct, tokens)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_variant_inputs(model: nn.Module, batch: dict[str, Any]) -> AbstractContextManager:
    """Hand a batch's ``task_ids`` to the adapter's variant for the forward (a no-op without them)."""
    return variant_inputs(model, task_ids=batch["task_ids"]) if "task_ids" in batch else nullcontext()
