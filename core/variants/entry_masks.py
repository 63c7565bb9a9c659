"""Boolean masks on the entries of A and B, shared by Sparse LoRA and Pruning-aware LoRA.

The effective factors are ``A ⊙ M_A`` and ``B ⊙ M_B``::

    x ─► (A ⊙ M_A) ─► (B ⊙ M_B) ─► ×s ─► (+ base)

Every use (forward, delta weight, merge) goes through :meth:`EntryMaskBehaviour.factors`,
so a masked entry never contributes, and its gradient is exactly zero, so it never
trains either.  The masks are boolean buffers (see :mod:`.layer_state`): saved with
the adapter, never seen by an optimizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .layer_state import MaskSet, layers_with_behaviour, variant_container

MASK_ATTRIBUTES = ("entry_mask_A", "entry_mask_B")


class EntryMaskBehaviour(AdapterBehaviour):
    """LoRA with fixed-shape boolean masks on the entries of A and B (all ones when created)."""
    forward_path = "own"  # masked factors

    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """A and B as standard LoRA, plus all-ones masks of their shapes."""
        super().create(layer, adapter, r)
        for index, attribute in enumerate(MASK_ATTRIBUTES):
            masks = {
                key: torch.ones_like(layer.stored_factors(adapter, key)[index], dtype=torch.bool)
                for key in layer.weight_slots()
            }
            variant_container(layer, attribute)[adapter] = MaskSet(masks)

    def masks(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (M_A, M_B) masks of weight ``key``."""
        mask_a, mask_b = (getattr(layer, attribute)[adapter].get(key) for attribute in MASK_ATTRIBUTES)
        return mask_a, mask_b

    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A ⊙ M_A, B ⊙ M_B)``: forward, delta weight and merge all see only unmasked entries."""
        a, b = layer.stored_factors(adapter, key)
        mask_a, mask_b = self.masks(layer, adapter, key)
        return a * mask_a, b * mask_b

    def masked_pairs(self, layer: AdapterLayer, adapter: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every (stored factor, its mask) pair of this adapter on this layer."""
        for key in layer.weight_slots():
            yield from zip(layer.stored_factors(adapter, key), self.masks(layer, adapter, key))

    @torch.no_grad()
    def zero_masked_entries(self, layer: AdapterLayer, adapter: str) -> None:
        """Make the stored factors equal the effective ones, so what is saved is exactly what runs.

        A masked entry gets no gradient, but an optimizer's momentum (from before it was pruned) can
        still move it; the variants call this after every step.
        """
        for factor, mask in self.masked_pairs(layer, adapter):
            factor.masked_fill_(~mask, 0.0)


def zero_all_masked_entries(model: nn.Module, adapter: str) -> None:
    """:meth:`EntryMaskBehaviour.zero_masked_entries` on every layer of ``adapter``."""
    for _, layer, behaviour in layers_with_behaviour(model, adapter, EntryMaskBehaviour):
        behaviour.zero_masked_entries(layer, adapter)


def mask_sparsity(model: nn.Module, adapter: str) -> dict[str, Any]:
    """The fraction of masked-out entries of A and B, over the whole adapter and per layer."""
    per_layer: dict[str, float] = {}
    masked = total = 0
    for name, layer, behaviour in layers_with_behaviour(model, adapter, EntryMaskBehaviour):
        layer_masked = layer_total = 0
        for _, mask in behaviour.masked_pairs(layer, adapter):
            layer_masked += int((~mask).sum())
            layer_total += mask.numel()
        per_layer[name] = layer_masked / layer_total if layer_total else 0.0
        masked, total = masked + layer_masked, total + layer_total
    return {"sparsity": masked / total if total else 0.0, "layer_sparsity": per_layer}
