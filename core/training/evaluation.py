"""Loss and accuracy (classification) or perplexity (language modelling) on a validation set,
and for classifiers the confusion matrix the accuracy comes from."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .task_loss import batch_variant_inputs, model_logits, score_batch, to_device


@dataclass(frozen=True)
class EvalResult:
    """Target-weighted mean loss, and accuracy or perplexity.

    ``confusion[true][predicted]`` counts the validation examples of a classifier (one row and
    column per model output); its diagonal over its total is ``accuracy``.  None for causal LM.
    """

    loss: float
    accuracy: float | None
    perplexity: float | None
    confusion: list[list[int]] | None = None


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
    loss_sum, targets = 0.0, 0
    confusion: torch.Tensor | None = None
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            batch = to_device(batch, device)
            with autocast(), batch_variant_inputs(model, batch):
                if task == "causal-lm":
                    score = score_batch(model, batch, task, forward_style)
                    loss_sum += float(score.loss_sum)
                    targets += score.targets
                    continue
                # The classifier's loss as score_batch computes it, plus the predictions the counts
                # come from: accuracy and confusion matrix cannot disagree.
                logits = model_logits(model, batch, forward_style)
                labels = batch["labels"]
                loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            targets += int(labels.shape[0])
            confusion = _count(confusion, labels, logits.argmax(-1), logits.shape[-1])
    finally:
        model.train(was_training)
    loss = loss_sum / max(targets, 1)
    if task == "causal-lm":
        return EvalResult(loss, None, math.exp(min(loss, 50.0)))  # capped: exp overflows for a diverged model
    if confusion is None:  # an empty validation set
        return EvalResult(loss, 0.0, None, [])
    correct = int(confusion.diagonal().sum())
    return EvalResult(loss, correct / max(targets, 1), None, confusion.tolist())


def _count(confusion: torch.Tensor | None, labels: torch.Tensor, predicted: torch.Tensor, outputs: int) -> torch.Tensor:
    """``confusion`` plus this batch's (true, predicted) pairs, one row and column per model output."""
    labels, predicted = labels.detach().long().cpu(), predicted.detach().long().cpu()
    counts = torch.bincount(labels * outputs + predicted, minlength=outputs * outputs).reshape(outputs, outputs)
    return counts if confusion is None else confusion + counts


def output_names(label_names: list[str] | None, outputs: int) -> list[str]:
    """One name per classifier output: the run's label names, then ``output N`` for any the
    label set leaves unnamed (a head larger than the data's classes)."""
    names = list(label_names or [])[:outputs]
    return names + [f"output {i}" for i in range(len(names), outputs)]
