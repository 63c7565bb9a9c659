"""Sparse LoRA: fixed random masks on the entries of A and B.

A chosen fraction ``sparsity`` of the entries of each factor is switched off once,
at random, when the adapter is created, and stays off: the update is
``s · (B ⊙ M_B)(A ⊙ M_A)``.  Training a fixed random subset of parameters is the
idea of random masking for parameter-efficient fine-tuning (Xu & Zhang 2024); here
the subset is drawn inside the LoRA factors, so the update keeps LoRA's low rank
and merges exactly like LoRA.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, module_base
from .entry_masks import EntryMaskBehaviour, mask_sparsity, zero_all_masked_entries
from .registry import Variant, register_variant
from .schedules import check_sparsity


@dataclass
class SparseLoraSettings:
    """Settings of Sparse LoRA."""

    sparsity: float = field(
        default=0.5,
        metadata={"help": "Fraction of the entries of A and of B masked out for good, in [0, 1); 0.5 halves them."},
    )
    mask_seed: int = field(
        default=0, metadata={"help": "Seed of the random masks; each layer derives its own from it and its name."}
    )

    def __post_init__(self) -> None:
        check_sparsity("sparsity", self.sparsity)
        if isinstance(self.mask_seed, bool) or not isinstance(self.mask_seed, int) or self.mask_seed < 0:
            raise ValueError(f"mask_seed must be an integer >= 0; got {self.mask_seed!r}")


def random_mask(shape: torch.Size, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask with exactly ``round(sparsity · numel)`` entries off, placed uniformly at random."""
    numel = shape.numel()
    mask = torch.ones(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[: round(sparsity * numel)]] = False
    return mask.view(shape)


class SparseLoraBehaviour(EntryMaskBehaviour):
    """LoRA whose A and B carry fixed random masks drawn at initialisation."""

    def __init__(self, sparsity: float, seed: int) -> None:
        self.sparsity = sparsity
        self.seed = seed

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """Standard LoRA init, then the masks; masked entries are zeroed in the stored factors too."""
        AdapterBehaviour.initialise(self, layer, adapter, init, untie)
        generator = torch.Generator().manual_seed(self.seed)
        for _, mask in self.masked_pairs(layer, adapter):
            mask.copy_(random_mask(mask.shape, self.sparsity, generator))
        self.zero_masked_entries(layer, adapter)


class SparseLora(Variant):
    name = "sparse"
    title = "Sparse LoRA"
    description = (
        "LoRA with fixed random sparsity inside its factors: a chosen fraction of the entries of A and of B "
        "is switched off at random when the adapter is created and never trains or contributes. The update "
        "stays a low-rank product, so it merges into the base exactly like LoRA, with fewer effective "
        "trainable entries. The masks are saved with the adapter, so a reloaded adapter behaves identically."
    )
    paper = (
        "Xu & Zhang, 'Random Masking Finds Winning Tickets for Parameter Efficient Fine-tuning', ICML 2024 "
        "(arXiv:2405.02596), applied to the factors of Hu et al., 'LoRA', ICLR 2022 (arXiv:2106.09685)"
    )
    settings_class = SparseLoraSettings
    peft_type = None  # PEFT's LoRA format has no place for the masks

    def __init__(self) -> None:
        # Target name per base layer, filled by prepare_model for the behaviour() calls of the same attach,
        # so each layer's mask depends on the seed and its name, never on the order layers are visited.
        self._layer_names: dict[int, str] = {}

    def prepare_model(self, model: nn.Module, targets: list[str], settings: SparseLoraSettings) -> None:

        self._layer_names = {id(module_base(model.get_submodule(name))): name for name in targets}

    def behaviour(self, layer: AdapterLayer, settings: SparseLoraSettings) -> AdapterBehaviour:
        name = self._layer_names.get(id(layer.base_layer), "")
        seed = zlib.crc32(f"{settings.mask_seed}:{name}".encode())  # stable across runs (hash() is salted)
        return SparseLoraBehaviour(settings.sparsity, seed)

    def after_step(
        self, model: nn.Module, adapter: str, settings: SparseLoraSettings, step: int, total_steps: int
    ) -> None:
        """Keep the stored factors equal to the effective ones (masked entries at exactly zero)."""
        zero_all_masked_entries(model, adapter)

    def summary(self, model: nn.Module, adapter: str, settings: SparseLoraSettings) -> dict[str, Any]:
        """The fraction of A and B entries masked out, overall and per layer."""
        return mask_sparsity(model, adapter)


register_variant(SparseLora())
