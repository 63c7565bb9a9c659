"""Turn a list of examples (dicts) into one batch of tensors, padding token sequences.

Packed rows (:mod:`.packing`, which carry ``position_ids``) get a 4D block-diagonal causal
``attention_mask`` (batch × 1 × L × L, additive: 0 where a token may attend, a large negative
number elsewhere) instead of the 2D padding mask: transformers models take a 4D mask as it is
(GPT-2, Llama, ... with eager or SDPA attention), so no token attends outside its own example.
Padding after a packed row is one more "example" of its own, so no row of the mask is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100  # cross-entropy skips these targets (padding, masked prompts)
#: The batch keys a model's forward takes; the rest of a batch (labels, variant inputs) is the loss's.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values")
#: What a 4D mask adds where attention is refused: -inf-like in float32, bfloat16 and float16 alike
#: (no row is ever fully refused: a token always sees itself).
MASKED = torch.finfo(torch.float32).min


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """The additive 4D causal mask (batch × 1 × L × L, float32) of packed rows whose examples each
    start where ``position_ids`` (batch × L) is 0: a token attends to itself and the tokens before
    it in its own example, never to another example."""
    segments = (position_ids == 0).cumsum(-1)  # which example of its row each token belongs to
    same = segments[:, :, None] == segments[:, None, :]
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, MASKED)
    return mask[:, None]


def batch_tokens(batch: dict[str, torch.Tensor]) -> int | None:
    """Real (not padding) tokens of a token batch, for tokens/second; None without tokens.

    A 2D padding mask sums to them; a packed batch's 4D mask does not, so its tokens are counted
    from its ``token_count`` entry.
    """
    if "token_count" in batch:
        return int(batch["token_count"].sum())
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return None


def make_collate(pad_id: int = 0) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A collate function: stacks tensors, pads ``input_ids`` (and token ``labels``) to the longest;
    packed rows (with ``position_ids``) get their block-diagonal mask (see the module)."""

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
            if "position_ids" in first:  # packed rows
                positions = torch.zeros((len(examples), width), dtype=torch.long)
                for i, e in enumerate(examples):
                    n = len(e["position_ids"])
                    positions[i, :n] = torch.as_tensor(e["position_ids"])
                    positions[i, n:] = torch.arange(width - n)  # the padding: an example of its own
                batch["position_ids"] = positions
                batch["token_count"] = mask.sum(-1)
                batch["attention_mask"] = block_causal_mask(positions)
        if "pixel_values" in first:
            batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        if "labels" not in batch:
            batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        if "task_ids" in first:  # multi-task variants read it through variant_inputs
            batch["task_ids"] = torch.tensor([int(e["task_ids"]) for e in examples], dtype=torch.long)
        return batch

    return collate
