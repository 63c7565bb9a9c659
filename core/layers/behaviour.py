"""How one adapter on one layer behaves: standard LoRA, and the hooks variants override.

A layer type (Linear, Conv, Embedding, weight-space) knows its *mechanics*: which
weights it adapts, how to project an input down through A and up through B, how
to apply a whole weight.  An :class:`AdapterBehaviour` knows the *mathematics* of
one adapter: its parameters, its initialisation, its effective factors, its
forward, its update and how it merges.  Variants subclass this class and
override only what their paper changes (STYLE.md: PEFT's strategy objects).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .base import AdapterLayer


class MergeNotSupportedError(ValueError):
    """The adapter's update depends on the input, so no single weight can hold it."""


class NonFiniteDeltaError(ValueError):
    """A merge was refused because an adapter's update holds NaN or Inf."""


def _all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or Inf: one min/max reduction instead of ``isfinite(t).all()``'s mask.

    The minimum and maximum propagate NaN and are ±Inf when any element is, so both are finite
    exactly when every element is; in ``t``'s own dtype, no conversion, no overflow to reason about.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return bool(torch.isfinite(t).all())
    low, high = torch.aminmax(t)
    return math.isfinite(float(low)) and math.isfinite(float(high))


class AdapterBehaviour:
    """Standard LoRA (Hu et al. 2021): ``y = base(x) + s · B A x``; the update ``s · B A`` merges."""

    #: False for updates that depend on the input; merge then raises :class:`MergeNotSupportedError`.
    can_merge: bool = True
    #: Why merging is impossible, shown in the error and the window.
    cannot_merge_reason: str = ""
    #: True when :meth:`merge` changes the base only through the layer's weight slots, honouring
    #: ``untie`` (a new tensor instead of an in-place write); a merged copy may then share those
    #: weights with the live model.  False for a behaviour that replaces the base layer (QLoRA).
    merges_through_slots: bool = True

    # -- parameters -------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """Create the adapter's parameters on ``layer`` (default: A and B factors)."""
        layer._create_factors(adapter, r)

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """Set initial values (called under ``no_grad``, never on the meta device)."""
        if init == "pissa":
            layer._pissa_init(adapter, untie)
        else:
            layer._reset_factors(adapter, init)

    def parameters(self, layer: AdapterLayer, adapter: str) -> Iterator[nn.Parameter]:
        """Every trainable tensor of this adapter on this layer."""
        for attr in layer.factor_attributes:
            container = getattr(layer, attr)
            if adapter in container:
                part = container[adapter]
                yield from part.parameters() if isinstance(part, nn.Module) else [part]

    @property
    def fusable(self) -> bool:
        """True when this behaviour is standard LoRA in its factors and update, so a layer may run the
        fused autograd function (:mod:`.fused_lora`) instead of :meth:`update`; a variant that changes
        either keeps the op-by-op path it defines."""
        cls = type(self)
        return cls.factors is AdapterBehaviour.factors and cls.update is AdapterBehaviour.update

    # -- the update -----------------------------------------------------------------------------
    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective (A, B) used in forward and merge; variants mask or generate them here."""
        return layer._factors(adapter, key)

    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        """The update of weight ``key`` in its own layout, in float32."""
        a, b = self.factors(layer, adapter, key)
        product = b.reshape(b.shape[0], -1).float() @ a.reshape(a.shape[0], -1).float()
        # In place on the fresh product: the same values, one weight-sized allocation fewer.
        return layer._weight_slots()[key].layout(product).mul_(layer.scaling[adapter])

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to an input-side layer's output for input ``x``."""
        a, b = self.factors(layer, adapter, "weight")
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(a.dtype))
        return layer._up(layer._down(x, a, adapter), b, adapter) * layer.scaling[adapter]

    def forward(self, layer: AdapterLayer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The adapted output of an input-side layer, given the base output ``result``."""
        if self.fusable:
            fused = layer._fused_forward(adapter, x, result)
            if fused is not None:  # the layer type and this call allow the one-function path
                return fused
        return result + self.update(layer, adapter, x).to(result.dtype)

    def effective_weight(
        self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor
    ) -> torch.Tensor:
        """The differentiable adapted weight, for layers adapted in weight space."""
        a, b = self.factors(layer, adapter, key)
        delta = layer._weight_slots()[key].layout(b @ a) * layer.scaling[adapter]
        return weight + delta.to(weight.dtype)

    # -- merging ------------------------------------------------------------------------------------
    def merged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The float32 weight with this adapter merged in (a new tensor; ``weight`` is not changed)."""
        if type(self).delta_weight is not AdapterBehaviour.delta_weight:
            return weight + self.delta_weight(layer, adapter, key)  # a variant's own update
        # W + s·B·A as one BLAS call (C = αAB + C): reads W once and writes the result once, where
        # product, scaling and sum would take three weight-sized passes and a temporary.
        a, b = self.factors(layer, adapter, key)
        a, b = a.reshape(a.shape[0], -1).float(), b.reshape(b.shape[0], -1).float()
        scaling = layer.scaling[adapter]
        if layer._weight_slots()[key].transposed:  # stored (in, out): W + s·(B A)ᵀ = W + s·Aᵀ Bᵀ
            return torch.addmm(weight, a.t(), b.t(), alpha=scaling)
        return torch.addmm(weight.reshape(weight.shape[0], -1), b, a, alpha=scaling).reshape(weight.shape)

    def unmerged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The float32 weight with this adapter taken out again."""
        return weight - self.delta_weight(layer, adapter, key)

    def merge(self, layer: AdapterLayer, adapter: str, untie: frozenset[str]) -> None:
        """Write the merged weights into the base layer, computed in float32 and checked first."""
        if not self.can_merge:
            raise MergeNotSupportedError(self.cannot_merge_reason or "this variant cannot be merged")
        slots = layer._weight_slots()
        new_weights = {}
        for key, slot in slots.items():
            merged = self.merged_weight(layer, adapter, key, slot.param.float())
            if not _all_finite(merged):
                raise NonFiniteDeltaError(
                    f"refusing to merge adapter {adapter!r}: its update of {key!r} holds NaN or Inf; "
                    "the base weights were left untouched"
                )
            new_weights[key] = merged
        for key, slot in slots.items():
            layer._write_base_weight(key, new_weights[key], untie=key in untie)

    def check_merged_again(self, layer: AdapterLayer, adapter: str) -> None:
        """Called when ``adapter`` is merged while already merged (a no-op): raise if that would
        silently keep a different update than the caller asked for. Default: nothing to check."""

    def unmerge(self, layer: AdapterLayer, adapter: str) -> None:
        """Take this adapter's update out of the base weights."""
        for key, slot in layer._weight_slots().items():
            layer._write_base_weight(key, self.unmerged_weight(layer, adapter, key, slot.param.float()), untie=False)

    def delete(self, layer: AdapterLayer, adapter: str) -> None:
        """Remove this adapter's parameters from the layer."""
        for attr in layer.factor_attributes:
            container = getattr(layer, attr)
            if adapter in container:
                del container[adapter]
