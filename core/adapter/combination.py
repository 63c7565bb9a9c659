"""Weighted combination of adapters into a new one (PEFT's ``add_weighted_adapter``).

The goal of each method is the weighted update ``Σ wᵢ·sᵢ·Bᵢ·Aᵢ``:

* ``cat`` — stack the factors: ranks add and the result is exact.
* ``svd`` — the truncated SVD of the weighted sum at a chosen rank: exact once the
  rank reaches the rank of the sum, the best rank-k approximation below it.
* ``linear`` — PEFT's definition for adapters of one rank: ``A = Σ cᵢ·Aᵢ``,
  ``B = Σ cᵢ·Bᵢ`` with ``cᵢ = sqrt(wᵢ·sᵢ)``.  Exact for a single adapter;
  for several it includes cross terms, so prefer ``cat`` or ``svd`` when the
  sum itself is wanted.

The new adapter has scaling 1 (alpha = r per layer).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from torch import nn

from ..layers import AdapterLayer, adapter_layers
from ..variants import get_variant
from .config import LoraConfig
from .lifecycle import adapter_state, require_adapter_state, set_active_adapter

CombinationType = Literal["linear", "cat", "svd"]


@torch.no_grad()
def add_weighted_adapter(
    model: nn.Module,
    adapters: list[str],
    weights: list[float],
    new_name: str,
    combination_type: CombinationType = "svd",
    svd_rank: int | None = None,
) -> None:
    """Create adapter ``new_name`` from a weighted combination of existing ``adapters``.

    ``svd_rank`` defaults to the largest rank among the sources. The new adapter is not activated.
    """
    state = require_adapter_state(model, None)
    if not adapters or len(adapters) != len(weights):
        raise ValueError("adapters and weights must be non-empty lists of the same length")
    for name in adapters:
        require_adapter_state(model, name)
    if new_name in state.configs:
        raise ValueError(f"adapter {new_name!r} already exists; choose another name")
    if combination_type not in ("linear", "cat", "svd"):
        raise ValueError(f"combination_type must be 'linear', 'cat' or 'svd'; got {combination_type!r}")
    if any(state.configs[a].modules_to_save for a in adapters):
        raise ValueError(
            "adapters that train whole modules (modules_to_save) cannot be combined; combine LoRA-only adapters"
        )
    for a in adapters:
        variant = get_variant(state.configs[a].variant)
        if not variant.combinable:
            raise ValueError(f"adapter {a!r} uses variant {variant.title!r}, whose updates cannot be combined")
    if svd_rank is not None and svd_rank < 1:
        raise ValueError(f"svd_rank must be >= 1, got {svd_rank}")

    ranks: dict[str, int] = {}
    for name, layer in adapter_layers(model):
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_names]
        if not present:
            continue
        if combination_type == "linear" and len({layer.r[a] for a, _ in present}) > 1:
            raise ValueError(f"'linear' needs equal ranks; layer {name!r} has {[layer.r[a] for a, _ in present]}")
        new_factors = {key: _combine(layer, key, present, combination_type, svd_rank) for key in layer.weight_slots()}
        rank = next(iter(new_factors.values()))[0].shape[0]
        layer.add_adapter(new_name, r=rank, alpha=float(rank), dropout=0.0, init="default", use_rslora=False)
        for key, (a_new, b_new) in new_factors.items():
            a, b = layer.stored_factors(new_name, key)
            a.copy_(a_new.reshape(a.shape))
            b.copy_(b_new.reshape(b.shape))
        ranks[name] = rank

    first = state.configs[adapters[0]]
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    state.configs[new_name] = LoraConfig(
        r=common,
        alpha=float(common),
        targets=list(ranks),
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != common},
        alpha_pattern={re.escape(n): float(r) for n, r in ranks.items() if r != common},
        bias=first.bias,
        variant=first.variant,
    )
    set_active_adapter(model, adapter_state(model).active)  # re-apply trainability: the new one stays frozen


def _combine(
    layer: AdapterLayer, key: str, present: list[tuple[str, float]], kind: str, svd_rank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) as 2-D float32 matrices for one adapted weight."""

    def factors(adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = layer.stored_factors(adapter, key)
        return a.reshape(a.shape[0], -1).float(), b.reshape(b.shape[0], -1).float()

    if kind == "linear":
        a_sum = b_sum = 0
        for adapter, weight in present:
            a, b = factors(adapter)
            c = math.sqrt(abs(weight) * layer.scaling[adapter])
            a_sum = a_sum + math.copysign(c, weight) * a
            b_sum = b_sum + c * b
        return a_sum, b_sum
    if kind == "cat":
        parts = [(factors(adapter), weight * layer.scaling[adapter]) for adapter, weight in present]
        a_cat = torch.cat([a for (a, _), _ in parts], dim=0)
        b_cat = torch.cat([b * c for (_, b), c in parts], dim=1)
        return a_cat, b_cat
    total = 0
    for adapter, weight in present:
        a, b = factors(adapter)
        total = total + (weight * layer.scaling[adapter]) * (b @ a)
    rank = svd_rank or max(layer.r[adapter] for adapter, _ in present)
    rank = min(rank, *total.shape)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    root = torch.sqrt(s[:rank])
    return root[:, None] * vh[:rank], u[:, :rank] * root
