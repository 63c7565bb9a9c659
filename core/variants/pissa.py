"""PiSSA: LoRA whose factors start on the weight's principal singular directions (Meng et al. 2024).

Everything PiSSA-specific lives here: its initialisation, its rank limit, and the conversion a
save needs.  With ``W = U S Vᵀ`` and scaling ``s``, the adapter takes the top-r part and the
frozen base keeps the residual (section 3)::

    B = U_r · sqrt(S_r / s)      A = sqrt(S_r / s) · V_rᵀ      W_res = W - s·B·A

so ``W_res + s·B·A = W``: the adapted model starts *exactly* as the original model (up to float
rounding), while the base alone (adapters disabled) is the residual model.  Training then updates
the principal components directly, which the paper finds converges faster than LoRA's
zero-started update.  Forward, merge and unmerge are LoRA's; merging gives ``W_res + s·ΔBA``,
i.e. the original weight plus what was learned.  ``attach`` checks the ranks (:meth:`Pissa.rank_problem`)
before anything changes and gives weights shared with another module (GPT-2's tied embedding and
output head) their own copy (``rewrites_base_at_init``).  Older configs and PEFT's say
``init = "pissa"``; :class:`~lora_studio.core.adapter.config.LoraConfig` reads that as this variant.

**Saving** (:func:`convert_pissa`).  The factors only make sense on top of the residual.  A file
that must load into anybody's unmodified base (PEFT's ``from_pretrained``, our ``load_adapter``)
therefore carries the difference to the original weight instead::

    ΔW = (W_res + s·B·A) − W_orig = s·(B·A − B₀·A₀)      (rank ≤ 2r)

PEFT computes it from the initial factors B₀, A₀
(``path_initial_model_for_weight_conversion``).  We compute it from the original
weights, which the caller passes in, and factor it exactly with an SVD into
rank 2r, keeping the scale s (so r and alpha both double, as PEFT writes them;
with rsLoRA alpha grows by √2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, adapter_layers
from .registry import Variant, register_variant


class PissaBehaviour(AdapterBehaviour):
    """Standard LoRA's forward and merge; only the initialisation is PiSSA's (whatever ``init`` says)."""

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """A, B from the top-r singular triplets (a full SVD, so the residual is reproducible); the base
        keeps the residual, in a new tensor for the weights named in ``untie``."""
        scaling = layer.scaling[adapter]
        for key, slot in layer.weight_slots().items():
            a, b = layer.stored_factors(adapter, key)
            r = a.shape[0]
            original = slot.matrix(slot.param.float())
            u, s, vh = torch.linalg.svd(original, full_matrices=False)
            root = torch.sqrt(s[:r] / scaling)
            b.copy_((u[:, :r] * root).reshape(b.shape))
            a.copy_((root[:, None] * vh[:r]).reshape(a.shape))
            layer.reimpose_constraints(adapter)
            residual = original - scaling * (b.reshape(b.shape[0], -1).float() @ a.reshape(r, -1).float())
            residual = slot.layout(residual).to(slot.param.dtype)
            if key in untie:
                layer.set_base_weight(key, nn.Parameter(residual, requires_grad=False))
            else:
                slot.param.copy_(residual)


class Pissa(Variant):
    name = "pissa"
    title = "PiSSA"
    description = (
        "Principal Singular values and Singular vectors Adaptation: LoRA whose A and B start as the top-r "
        "singular directions of each weight, while the frozen base keeps only the residual. The model "
        "starts exactly as the original, but training changes the weight's most important components "
        "directly, which converges faster than LoRA in the paper. Needs r <= the smaller weight dimension; "
        "merges like LoRA. With adapters disabled the model is the residual, not the original."
    )
    paper = (
        "Meng, Wang and Zhang, 'PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large "
        "Language Models', NeurIPS 2024 (arXiv:2404.02948)"
    )
    # The adapted model equals the *original* model, but the base under it (what disabling adapters
    # shows) is the residual, so "adapter output == base output" does not hold.
    starts_as_identity = False
    combinable = True  # plain A/B factors
    # PEFT holds PiSSA as init_lora_weights="pissa", not as a variant; until the writer maps it, the
    # adapter is saved in the studio's own form (PEFT would load the factors on the original base).
    peft_type = None
    rewrites_base_at_init = True

    def rank_problem(self, layer: AdapterLayer, name: str, rank: int) -> str | None:
        """PiSSA takes the top-r singular triplets, so r cannot exceed the smaller weight dimension."""
        for key, slot in layer.weight_slots().items():
            limit = min(slot.matrix(slot.param).shape)
            if rank > limit:
                return (f"PiSSA needs rank <= {limit} for layer {name!r} ({key} is {tuple(slot.param.shape)}), "
                        f"got r={rank}; lower the rank or set a rank_pattern for this layer")
        return None

    def behaviour(self, layer: AdapterLayer, settings: Any) -> AdapterBehaviour:
        return PissaBehaviour()


register_variant(Pissa())


OriginalBase = nn.Module | dict[str, torch.Tensor]


def _original_weight(original_base: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in original_base:
        raise ValueError(f"original_base has no weight {name!r}; pass the base model as it was before PiSSA")
    return original_base[name].detach()


@torch.no_grad()
def convert_pissa(
    model: nn.Module, adapter_name: str, original_base: OriginalBase, peft_keys: dict[int, str], *, use_rslora: bool
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """Replacement factor tensors (by PEFT key), ranks and alphas of the equivalent plain LoRA.

    ``peft_keys`` maps ``id(factor tensor)`` to its PEFT key, so the converted tensors land
    under the very keys the live ones would have had.
    """
    if isinstance(original_base, nn.Module):
        original_base = dict(original_base.named_parameters())
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
        alphas[path] = s * (math.sqrt(2 * r) if use_rslora else 2 * r)
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


__all__ = ["OriginalBase", "Pissa", "PissaBehaviour", "convert_pissa"]
