"""Find a classifier's output head and give it the user's number of classes."""

from __future__ import annotations

import torch
from torch import nn

# transformers' heads, by the attribute names its classification models use (PEFT uses the same list).
TRANSFORMERS_HEAD_NAMES = ("classifier", "score")


def find_head(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` in module order: the output layer of every torchvision classifier."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError("found no nn.Linear output head in this model; name it with model.head")
    return last


def replace_head(model: nn.Module, name: str, num_classes: int) -> bool:
    """Give head ``name`` ``num_classes`` outputs (a fresh, seeded-by-caller layer); False if it already had them."""
    head = model.get_submodule(name)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model.head {name!r} is a {type(head).__name__}, not an nn.Linear")
    if head.out_features == num_classes:
        return False
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return True


def head_classes(model: nn.Module, name: str | None) -> int | None:
    """Output width of the head, when there is one."""
    if name is None:
        return None
    head = model.get_submodule(name)
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None
