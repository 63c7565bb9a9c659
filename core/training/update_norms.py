"""How much each adapted layer has learnt: the Frobenius norm of its update ``‖s · B A‖``.

The window shows these per layer at each evaluation, so a user sees which layers are
learning (LoRA's own paper reads the same quantity, ‖ΔW‖_F, in its section 7.3).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import adapter_layers


@torch.no_grad()
def layer_update_norms(model: nn.Module) -> dict[str, float]:
    """``{layer name: ‖update‖_F}`` of the active adapter of every wrapped layer of ``model``.

    A layer with several adapted weights (attention's in/out projections) reports the norm
    over all of them.  Layers whose update depends on a per-batch input (no single ΔW exists) and
    layers with no active adapter are left out, so the result may be empty.
    """
    norms: dict[str, float] = {}
    for name, layer in adapter_layers(model):
        adapter = layer.active_adapter
        if adapter is None:
            continue
        try:
            squares = sum(float(delta.float().pow(2).sum()) for delta in layer.delta_weights(adapter).values())
        except (ValueError, NotImplementedError):  # input-dependent updates (e.g. per-task variants)
            continue
        norms[name] = math.sqrt(squares)
    return norms
