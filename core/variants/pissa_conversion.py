"""Turning a PiSSA adapter into a plain LoRA adapter that works on the *original* base.

PiSSA (Meng et al. 2024) moves the top-r singular part of each weight into the
adapter and leaves the residual in the base, so its factors only make sense on
top of that residual.  A file that must load into anybody's unmodified base
(PEFT's ``from_pretrained``, our ``load_adapter``) therefore carries the
difference to the original weight instead::

    ΔW = (W_res + s·B·A) − W_orig = s·(B·A − B₀·A₀)      (rank ≤ 2r)

PEFT computes it from the initial factors B₀, A₀
(``path_initial_model_for_weight_conversion``).  We compute it from the original
weights, which the caller passes in, and factor it exactly with an SVD into
rank 2r, keeping the scale s (so r and alpha both double, as PEFT writes them;
with rsLoRA alpha grows by √2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..adapter.lifecycle import get_adapter_config
from ..layers import adapter_layers

OriginalBase = nn.Module | dict[str, torch.Tensor]


def _original_weight(original_base: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in original_base:
        raise ValueError(f"original_base has no weight {name!r}; pass the base model as it was before PiSSA")
    return original_base[name].detach()


@torch.no_grad()
def convert_pissa(
    model: nn.Module, adapter_name: str, original_base: OriginalBase, peft_keys: dict[int, str]
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """Replacement factor tensors (by PEFT key), ranks and alphas of the equivalent plain LoRA.

    ``peft_keys`` maps ``id(factor tensor)`` to its PEFT key, so the converted tensors land
    under the very keys the live ones would have had.
    """
    if isinstance(original_base, nn.Module):
        original_base = dict(original_base.named_parameters())
    rslora = get_adapter_config(model, adapter_name).use_rslora
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, layer in adapter_layers(model):
        if adapter_name not in layer.adapter_names:
            continue
        r, s = layer.r[adapter_name], layer.scaling[adapter_name]
        for key, slot in layer.weight_slots().items():
            a, b = layer.stored_factors(adapter_name, key)
            original = slot.matrix(_original_weight(original_base, f"{path}.{key}").double())
            current = slot.matrix(slot.param.double() + layer.delta_weight(adapter_name, key).double())
            new_a, new_b = _factor(current - original, 2 * r, s)
            tensors[peft_keys[id(a)]] = new_a.reshape(2 * r, *a.shape[1:]).to(a.dtype).contiguous()
            tensors[peft_keys[id(b)]] = new_b.reshape(b.shape[0], 2 * r, *b.shape[2:]).to(b.dtype).contiguous()
        ranks[path] = 2 * r
        alphas[path] = s * (math.sqrt(2 * r) if rslora else 2 * r)
    return tensors, ranks, alphas


def _factor(delta: torch.Tensor, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank × in) and B (out × rank) with scaling·B·A = delta; zero-padded past delta's size."""
    u, sv, vh = torch.linalg.svd(delta / scaling, full_matrices=False)
    k = min(rank, sv.numel())
    root = sv[:k].sqrt()
    a = torch.zeros(rank, delta.shape[1], dtype=delta.dtype)
    b = torch.zeros(delta.shape[0], rank, dtype=delta.dtype)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root
    return a, b


__all__ = ["OriginalBase", "convert_pissa"]
