"""Turn a list of examples (dicts) into one batch of tensors, padding token sequences."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100  # cross-entropy skips these targets (padding, masked prompts)
#: The batch keys a model's forward takes; the rest of a batch (labels, variant inputs) is the loss's.
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")


def make_collate(pad_id: int = 0) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A collate function: stacks tensors, pads ``input_ids`` (and token ``labels``) to the longest."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        first = examples[0]
        if "input_ids" in first:
            width = max(len(e["input_ids"]) for e in examples)
            ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(examples), width), dtype=torch.long)
            for i, e in enumerate(examples):
                ids[i, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
                mask[i, : len(e["input_ids"])] = 1
            batch["input_ids"], batch["attention_mask"] = ids, mask
            if isinstance(first["labels"], (list, tuple)):  # causal LM: one target per token
                labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
                for i, e in enumerate(examples):
                    labels[i, : len(e["labels"])] = torch.as_tensor(e["labels"])
                batch["labels"] = labels
        if "pixel_values" in first:
            batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        if "labels" not in batch:
            batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        if "task_ids" in first:  # multi-task variants read it through variant_inputs
            batch["task_ids"] = torch.tensor([int(e["task_ids"]) for e in examples], dtype=torch.long)
        return batch

    return collate
