"""Proving a save is faithful: a model's outputs, compared with those of what was written.

A merged export is checked by :func:`~.merged_export.verify_export`; an adapter folder is
checked here the same way — a plain copy of the base gets the adapter back from disk and
must give the live model's outputs.  The window compares on one *fixed* batch (the first
validation samples, in order: :func:`lora_studio.core.data.export_example_inputs`), so the
figure the user sees can be reproduced.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapter.lifecycle import active_adapter, adapted_root, adapter_state, get_adapter_config, unload
from ..adapter.lifecycle import variant_inputs as variant_inputs_context
from ..variants import get_variant
from .adapter_folder import load_adapter


def verify_adapter(folder: str | Path, model: nn.Module, example_inputs: Any, adapter_name: str = "default") -> float:
    """Load the adapter saved in ``folder`` onto a plain copy of ``model``'s base and return the largest
    output difference from the live ``model`` on ``example_inputs`` (0 means a faithful save)."""
    reloaded = load_adapter(adapter_free_copy(model), folder, adapter_name)
    with _forward_inputs(model, example_inputs), _forward_inputs(reloaded, example_inputs):
        return max_output_difference(model_outputs(model, example_inputs), model_outputs(reloaded, example_inputs))


def _forward_inputs(model: nn.Module, example_inputs: Any) -> contextlib.AbstractContextManager:
    """The variant's own per-batch inputs (e.g. task ids), for variants that cannot run without them."""
    if adapter_state(model) is None:
        return contextlib.nullcontext()
    variant = get_variant(get_adapter_config(model, active_adapter(model)).variant)
    first = next(iter(example_inputs.values())) if isinstance(example_inputs, Mapping) else example_inputs
    extra = variant.example_inputs(len(first))
    return variant_inputs_context(model, **extra) if extra else contextlib.nullcontext()


def adapter_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every adapter removed: the original architecture, for reloading."""
    skeleton = copy.deepcopy(model)
    root = adapted_root(skeleton)
    if root is not None:
        unload(root)  # in place, inside the skeleton
    return skeleton


def model_outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """Every floating-point tensor ``model`` returns for ``inputs``, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(inputs, Mapping):
                out = model(**inputs)
            elif isinstance(inputs, tuple):
                out = model(*inputs)
            else:
                out = model(inputs)
    finally:
        model.train(was_training)
    return [t for t in _flatten(out) if t.is_floating_point()]


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):  # transformers' ModelOutput is a Mapping too
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [t for v in value for t in _flatten(v)]
    return []


def max_output_difference(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
    """The largest absolute difference between two models' outputs (as returned by :func:`model_outputs`)."""
    if len(expected) != len(actual):
        raise ValueError(f"the models returned different numbers of tensors ({len(expected)} vs {len(actual)})")
    worst = 0.0
    for a, b in zip(expected, actual):
        if a.shape != b.shape:
            raise ValueError(f"output shapes differ: {list(a.shape)} vs {list(b.shape)}")
        worst = max(worst, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return worst


__all__ = ["adapter_free_copy", "max_output_difference", "model_outputs", "verify_adapter"]
