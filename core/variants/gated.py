"""Gated LoRA: an input-dependent soft gate over the r rank components.

::

    x ──► dropout ─┬─► A ──────────► h (r) ──► ⊙ ──► B ──► ×s ──► (+ base(x)) ──► y
                   └─► G ─► +b ─► σ ─► g (r) ──┘

    y = base(x) + s · B (g(x) ⊙ A x),     g(x) = σ(G x + b) ∈ (0, 1)^r

Each rank-one component ``B[:, i] A[i, :]`` is an "expert" whose contribution the
gate turns up or down per input (per token, per pixel position for convolutions).
G has A's shape and is applied with the layer's own down-projection, so the same
code gates Linear, Conv and Embedding layers.  B starts at zero, so a fresh
adapter is the identity; G starts at zero and b at ``gate_bias_init``, so the gate
starts input-independent and learns to depend on x.  Because the update depends
on x, no single weight holds it: this variant cannot merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora, MergeNotSupportedError
from .conditioned import is_weight_space
from .layer_state import variant_container
from .registry import Variant, register_variant

CANNOT_MERGE = (
    "the gate g(x) scales each rank component by a factor that depends on the input, so the update "
    "s·B·diag(g(x))·A differs for every input and no single merged weight reproduces it; "
    "save the adapter and run it unmerged"
)


@dataclass
class GatedSettings:
    """Settings of Gated LoRA."""

    gate_bias_init: float = field(
        default=0.0,
        metadata={
            "help": "Initial gate logit b: 0 opens every rank halfway (σ(0) = 0.5), where the gate's gradient "
            "is largest; larger values start the gates more open."
        },
    )

    def __post_init__(self) -> None:
        value = self.gate_bias_init
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"gate_bias_init must be a finite number, got {value!r}")


class GatedBehaviour(AdapterBehaviour):
    """``s · B (σ(G x + b) ⊙ A x)`` on an input-side layer; the gate lives in ``layer.lora_gate``."""
    forward_path = "own"  # the gate acts on A·x
    update_form = "own"

    can_merge = False
    cannot_merge_reason = f"Gated LoRA cannot be merged: {CANNOT_MERGE}"

    def __init__(self, gate_bias_init: float = 0.0) -> None:
        self.gate_bias_init = gate_bias_init

    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        super().create(layer, adapter, r)
        a, _ = layer.stored_factors(adapter, "weight")
        variant_container(layer, "lora_gate")[adapter] = nn.ParameterDict(
            {
                "weight": nn.Parameter(torch.empty_like(a)),  # G: A's shape, applied like A
                "bias": nn.Parameter(torch.empty(r, dtype=a.dtype, device=a.device)),
            }
        )

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        super().initialise(layer, adapter, init, untie)
        gate = layer.lora_gate[adapter]
        nn.init.zeros_(gate["weight"])
        nn.init.constant_(gate["bias"], self.gate_bias_init)

    # -- the gate ----------------------------------------------------------------------------------
    def gate(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """``σ(G x + b)``: one value in (0, 1) per rank component, shaped like ``A x``."""
        gate = layer.lora_gate[adapter]
        weight = gate["weight"]
        if x.is_floating_point():
            x = x.to(weight.dtype)
        logits = layer.project_down(x, weight, adapter)
        shape = [1] * logits.dim()
        shape[_rank_axis(layer, logits)] = -1
        return torch.sigmoid(logits + gate["bias"].view(shape))

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors(layer, adapter, "weight")
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(a.dtype))
        h = layer.project_down(x, a, adapter) * self.gate(layer, adapter, x)
        return layer.project_up(h, b, adapter) * layer.scaling[adapter]

    # -- no single weight ----------------------------------------------------------------------------
    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        raise MergeNotSupportedError(self.cannot_merge_reason)

    def effective_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        raise MergeNotSupportedError(self.cannot_merge_reason)


def _rank_axis(layer: AdapterLayer, h: torch.Tensor) -> int:
    """Where the r components sit in ``A x``: after the batch for a convolution (N, r, *spatial),
    last for Linear and Embedding (..., r)."""
    if isinstance(layer, ConvLora):
        return h.dim() - 1 - len(layer.base_layer.kernel_size)
    return h.dim() - 1


class Gated(Variant):
    name = "gated"
    title = "Gated LoRA"
    description = (
        "LoRA whose r rank components are switched on and off per input by a learned soft gate: "
        "y = W·x + s·B·(g(x) ⊙ A·x) with g(x) = sigmoid(G·x + b). Each rank-one component acts as a small "
        "expert and the gate routes every token (or pixel position) to the components that help it, at the "
        "cost of one extra projection the size of A. B starts at zero, so training starts from the base model. "
        "Because the update depends on the input it cannot be merged into the weights: export the adapter."
    )
    paper = (
        "Rank-wise gating as in Zhao et al., 'Each Rank Could be an Expert: Single-Ranked Mixture of Experts "
        "LoRA for Multi-Task Learning' (SMoRA), 2025 (arXiv:2501.15103), which treats each LoRA rank as an "
        "expert chosen per token. Simplified here: a dense sigmoid gate per rank computed from the layer input, "
        "without SMoRA's top-k sparsity or load balancing."
    )
    can_merge = False
    merge_note = CANNOT_MERGE
    settings_class = GatedSettings
    peft_type = None

    def unsupported_reason(self, layer: AdapterLayer) -> str | None:
        if is_weight_space(layer):
            return (
                "it is adapted in weight space (one weight for the whole input), so there is no per-input "
                "rank activation A·x for a gate to act on; adapt its Linear/Conv layers instead"
            )
        return None

    def behaviour(self, layer: AdapterLayer, settings: GatedSettings) -> AdapterBehaviour:
        return GatedBehaviour(settings.gate_bias_init)


register_variant(Gated())
