"""How one adapter on one layer behaves: standard LoRA, and the hooks variants override.

A layer type (Linear, Conv, Embedding, weight-space) knows its *mechanics*: which
weights it adapts, how to project an input down through A and up through B, how
to apply a whole weight.  An :class:`AdapterBehaviour` knows the *mathematics* of
one adapter: its parameters, its initialisation, its effective factors, its
forward, its update and how it merges.  Variants subclass this class and
override only what their paper changes, declaring the paths that follow (PEFT's strategy objects).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from .base import AdapterLayer


class MergeNotSupportedError(ValueError):
    """The adapter's update depends on the input, so no single weight can hold it."""


class NonFiniteDeltaError(ValueError):
    """A merge was refused because an adapter's update holds NaN or Inf."""


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or Inf: one min/max reduction instead of ``isfinite(t).all()``'s mask.

    The minimum and maximum propagate NaN and are ±Inf when any element is, so both are finite
    exactly when every element is; in ``t``'s own dtype, no conversion, no overflow to reason about.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return bool(torch.isfinite(t).all())
    low, high = torch.aminmax(t)
    return math.isfinite(float(low)) and math.isfinite(float(high))


#: The forward paths a behaviour can declare (see :attr:`AdapterBehaviour.forward_path`).
FORWARD_PATHS = ("standard", "own")
#: The update forms a behaviour can declare (see :attr:`AdapterBehaviour.update_form`).
UPDATE_FORMS = ("low_rank", "own")
_FORWARD_METHODS = ("factors", "update", "forward")


class AdapterBehaviour:
    """Standard LoRA (Hu et al. 2021): ``y = base(x) + s · B A x``; the update ``s · B A`` merges.

    A subclass declares, in its own class body, how the layer may run and merge it; the declarations
    are checked when the class is defined, so a new variant cannot change a path by accident.
    """

    #: Which forward runs: ``"standard"`` -- LoRA's own :meth:`factors`, :meth:`update` and
    #: :meth:`forward`, so the layer may take its fastest exact path (the update folded into the weight,
    #: or the fused autograd function of :mod:`.fused_lora`, else op by op); ``"own"`` -- this
    #: behaviour's methods, op by op as written.  A class that overrides any of those three must say ``"own"``.
    forward_path: ClassVar[str] = "standard"
    #: How a merged weight is made: ``"low_rank"`` -- ``W + s·B·A`` of :meth:`factors` as one ``addmm``;
    #: ``"own"`` -- ``W +`` this behaviour's :meth:`delta_weight`, which a class that overrides it must say.
    update_form: ClassVar[str] = "low_rank"
    #: False for updates that depend on the input; merge then raises :class:`MergeNotSupportedError`.
    can_merge: bool = True
    #: Why merging is impossible, shown in the error and the window.
    cannot_merge_reason: str = ""
    #: True when :meth:`merge` changes the base only through the layer's weight slots, honouring
    #: ``untie`` (a new tensor instead of an in-place write), so a merged copy may share those weights
    #: with the live model.  False for a behaviour that replaces the base layer (QLoRA).
    merges_through_slots: ClassVar[bool] = True
    #: True when merging is exactly :meth:`merged_weight` written into each slot, nothing else kept or
    #: changed, so an export may make the merged weights one at a time without merging
    #: (:mod:`lora_studio.core.disk.merged_tensors`).  A class that overrides :meth:`merge` must declare it.
    merge_is_per_slot: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if cls.forward_path not in FORWARD_PATHS or cls.update_form not in UPDATE_FORMS:
            raise TypeError(f"{cls.__name__}: forward_path must be one of {FORWARD_PATHS} and update_form one of "
                            f"{UPDATE_FORMS}; got {cls.forward_path!r}, {cls.update_form!r}")
        overridden = [m for m in _FORWARD_METHODS if getattr(cls, m) is not getattr(AdapterBehaviour, m)]
        if overridden and cls.forward_path == "standard":
            raise TypeError(f"{cls.__name__} overrides {', '.join(overridden)}: declare forward_path = 'own' "
                            "(the layer's fast paths compute standard LoRA only)")
        if "delta_weight" in own and "update_form" not in own:
            raise TypeError(f"{cls.__name__} overrides delta_weight: declare update_form ('own' to merge with it)")
        if "merge" in own and "merge_is_per_slot" not in own:
            raise TypeError(f"{cls.__name__} overrides merge: declare merge_is_per_slot (False unless merging is "
                            "still exactly merged_weight written into each slot, with nothing else kept)")
        if cls.merge_is_per_slot and not cls.merges_through_slots:
            raise TypeError(f"{cls.__name__}: a merge that replaces the base layer is not per slot")

    # -- parameters -------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """Create the adapter's parameters on ``layer`` (default: A and B factors)."""
        layer.create_factors(adapter, r)

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """Set initial values (called under ``no_grad``, never on the meta device)."""
        layer.reset_factors(adapter, init)

    def parameters(self, layer: AdapterLayer, adapter: str) -> Iterator[nn.Parameter]:
        """Every trainable tensor of this adapter on this layer."""
        for attr in layer.factor_attributes:
            container = getattr(layer, attr)
            if adapter in container:
                part = container[adapter]
                yield from part.parameters() if isinstance(part, nn.Module) else [part]

    # -- the update -----------------------------------------------------------------------------
    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective (A, B) used in forward and merge; variants mask or generate them here."""
        return layer.stored_factors(adapter, key)

    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        """The update of weight ``key`` in its own layout, in float32."""
        a, b = self.factors(layer, adapter, key)
        product = b.reshape(b.shape[0], -1).float() @ a.reshape(a.shape[0], -1).float()
        # In place on the fresh product: the same values, one weight-sized allocation fewer.
        return layer.weight_slots()[key].layout(product).mul_(layer.scaling[adapter])

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to an input-side layer's output for input ``x``."""
        a, b = self.factors(layer, adapter, "weight")
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(a.dtype))
        return layer.project_up(layer.project_down(x, a, adapter), b, adapter) * layer.scaling[adapter]

    def forward(self, layer: AdapterLayer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The adapted output of an input-side layer, given the base output ``result``."""
        if self.forward_path == "standard":
            fused = layer.fused_forward(adapter, x, result)
            if fused is not None:  # the layer type and this call allow the one-function path
                return fused
        return result + self.update(layer, adapter, x).to(result.dtype)

    def effective_weight(
        self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor
    ) -> torch.Tensor:
        """The differentiable adapted weight, for layers adapted in weight space."""
        a, b = self.factors(layer, adapter, key)
        delta = layer.weight_slots()[key].layout(b @ a) * layer.scaling[adapter]
        return weight + delta.to(weight.dtype)

    # -- merging ------------------------------------------------------------------------------------
    def merged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The float32 weight with this adapter merged in (a new tensor; ``weight`` is not changed)."""
        if self.update_form == "own":
            return weight + self.delta_weight(layer, adapter, key)  # a variant's own update
        # W + s·B·A as one BLAS call (C = αAB + C): reads W once and writes the result once, where
        # product, scaling and sum would take three weight-sized passes and a temporary.
        a, b = self.factors(layer, adapter, key)
        a, b = a.reshape(a.shape[0], -1).float(), b.reshape(b.shape[0], -1).float()
        scaling = layer.scaling[adapter]
        if layer.weight_slots()[key].transposed:  # stored (in, out): W + s·(B A)ᵀ = W + s·Aᵀ Bᵀ
            return torch.addmm(weight, a.t(), b.t(), alpha=scaling)
        return torch.addmm(weight.reshape(weight.shape[0], -1), b, a, alpha=scaling).reshape(weight.shape)

    def unmerged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The float32 weight with this adapter taken out again."""
        return weight - self.delta_weight(layer, adapter, key)

    def merge(self, layer: AdapterLayer, adapter: str, untie: frozenset[str]) -> None:
        """Write the merged weights into the base layer, computed in float32 and checked first."""
        if not self.can_merge:
            raise MergeNotSupportedError(self.cannot_merge_reason or "this variant cannot be merged")
        slots = layer.weight_slots()
        new_weights = {}
        for key, slot in slots.items():
            merged = self.merged_weight(layer, adapter, key, slot.param.float())
            if not all_finite(merged):
                raise NonFiniteDeltaError(
                    f"refusing to merge adapter {adapter!r}: its update of {key!r} holds NaN or Inf; "
                    "the base weights were left untouched"
                )
            new_weights[key] = merged
        for key, slot in slots.items():
            layer.write_base_weight(key, new_weights[key], untie=key in untie)

    def check_merged_again(self, layer: AdapterLayer, adapter: str) -> None:
        """Called when ``adapter`` is merged while already merged (a no-op): raise if that would
        silently keep a different update than the caller asked for. Default: nothing to check."""

    def unmerge(self, layer: AdapterLayer, adapter: str) -> None:
        """Take this adapter's update out of the base weights."""
        for key, slot in layer.weight_slots().items():
            layer.write_base_weight(key, self.unmerged_weight(layer, adapter, key, slot.param.float()), untie=False)

    def delete(self, layer: AdapterLayer, adapter: str) -> None:
        """Remove this adapter's parameters from the layer."""
        for attr in layer.factor_attributes:
            container = getattr(layer, attr)
            if adapter in container:
                del container[adapter]
