"""The merged model's tensors, read off the live model without copying it.

:func:`~.merged_export.merged_copy` gets a merged model the sure way: copy the module tree, merge,
unwrap.  For a model that is only *written* (a plain ``.safetensors`` export) the module tree is
not needed, only the tensors ``merged_copy(...).state_dict()`` would hold, and those are known from
the live model alone:

* a tensor outside every adapter wrapper: itself (cast to the export precision through float32,
  as ``merged_copy`` casts the whole model);
* inside an adapter layer ``P``: ``P.base_layer.X`` becomes ``P.X``; an adapted weight becomes a
  :class:`~.safetensors_writer.PendingTensor` whose value -- the behaviour's ``merged_weight``,
  float32, checked for NaN/Inf -- is computed only when the writer reaches it, then dropped, so the
  export holds one merged weight at a time; the adapter's own tensors are left out;
* inside a modules-to-save wrapper ``P``: the current copy's tensors, as ``P.X``.

This is a second statement of what merging and unwrapping do, so it is used only where it is
plainly the same -- the active adapter, a behaviour that merges through the standard
:meth:`AdapterBehaviour.merge`, nothing merged yet, no merge inputs, no 4-bit layer -- and
``tests/core/test_merged_tensors.py`` checks it against ``merged_copy`` bit for bit for every
registered variant.  Everything else returns None and goes the copy's way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..adapter.lifecycle import adapted_root, adapter_state
from ..layers import AdapterLayer, ModulesToSave
from ..layers.behaviour import NonFiniteDeltaError, all_finite
from ..layers.nf4_linear import NF4Linear
from ..variants import get_variant
from .safetensors_writer import PendingTensor

_BASE = "base_layer."


def merged_tensors(
    model: nn.Module,
    adapter_name: str | None,
    dtype: torch.dtype,
    variant_inputs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor | PendingTensor] | None:
    """The tensors of ``merged_copy(model, adapter_name, ...).state_dict()`` in ``dtype``, merged weights
    pending; None where only the copy can say (see the module docstring)."""
    if any(isinstance(m, NF4Linear) for m in model.modules()):
        return None  # a 4-bit layer (QLoRA's, or a *-bnb-4bit base's) becomes a float layer in the copy
    root = adapted_root(model)
    state = adapter_state(root) if root is not None else None
    if state is None or variant_inputs or state.active is None or adapter_name not in (None, state.active):
        return None
    name = state.active
    if not get_variant(state.configs[name].variant).can_merge:
        return None  # the copy's merge raises the error that explains it
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, (AdapterLayer, ModulesToSave))}
    for layer in wrappers.values():
        if isinstance(layer, AdapterLayer) and name in layer.adapter_names:
            behaviour = layer.behaviours[name]
            if layer.merged_adapters or not behaviour.merge_is_per_slot or not layer.factors_finite(name):
                return None
    out: dict[str, torch.Tensor | PendingTensor] = {}
    for key, tensor in model.state_dict().items():
        owner = _outermost_wrapper(key, wrappers)
        if owner is None:
            out[key] = _cast(tensor, dtype)
            continue
        prefix, wrapper = owner
        rest = key[len(prefix) + 1 :]
        if isinstance(wrapper, ModulesToSave):
            kept = _current_prefix(wrapper)
            if rest.startswith(kept):
                out[f"{prefix}.{rest[len(kept):]}"] = _cast(tensor, dtype)
        elif rest.startswith(_BASE):
            inner = rest[len(_BASE) :]
            slots = wrapper.weight_slots() if name in wrapper.adapter_names else {}
            out[f"{prefix}.{inner}"] = (
                _pending_merge(wrapper, name, inner, prefix, dtype) if inner in slots else _cast(tensor, dtype)
            )
    return out


def _outermost_wrapper(key: str, wrappers: dict[str, nn.Module]) -> tuple[str, nn.Module] | None:
    parts = key.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if prefix in wrappers:
            return prefix, wrappers[prefix]
    return None


def _current_prefix(wrapper: ModulesToSave) -> str:
    """Where the module ``merge_and_unload`` keeps (the active trained copy, else the original) sits."""
    current = wrapper.current()
    for adapter, module in wrapper.modules_to_save.items():
        if module is current:
            return f"modules_to_save.{adapter}."
    return "original_module."


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # As merged_copy: the whole model to float32 first, then to the export precision (no copy when equal).
    return tensor.to(torch.float32).to(dtype) if tensor.is_floating_point() else tensor


def _pending_merge(layer: AdapterLayer, adapter: str, key: str, where: str, dtype: torch.dtype) -> PendingTensor:
    param = layer.weight_slots()[key].param

    def make() -> torch.Tensor:
        with torch.no_grad():
            merged = layer.behaviours[adapter].merged_weight(layer, adapter, key, param.float())
        if not all_finite(merged):
            raise NonFiniteDeltaError(
                f"refusing to merge adapter {adapter!r}: its update of {where}.{key} holds NaN or Inf; "
                "nothing was written"
            )
        return merged.to(dtype)

    return PendingTensor(tuple(param.shape), dtype, make)


__all__ = ["merged_tensors"]
