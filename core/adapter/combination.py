"""Weighted combination of adapters into a new one (PEFT's ``add_weighted_adapter``, same names and maths).

The methods, each for the weighted update ``Σ wᵢ·sᵢ·Bᵢ·Aᵢ`` of the adapters ``i``:

* ``cat`` — stack the factors: ranks add and the result is the weighted sum exactly.
* ``svd`` — the truncated SVD of the weighted sum at ``svd_rank``: exact once the rank reaches the
  rank of the sum, the best rank-k approximation below it.
* ``linear`` — PEFT's definition for adapters of one rank: ``A = Σ cᵢ·Aᵢ``, ``B = Σ cᵢ·Bᵢ``
  with ``cᵢ = sqrt(|wᵢ·sᵢ|)`` (the sign on A).  Exact for a single adapter; for several it has
  cross terms, so prefer ``cat`` or ``svd`` when the sum itself is wanted.
* ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` — the merging methods of
  :mod:`.merging_methods` applied, as PEFT does, to the A factors (weights ``±cᵢ``) and to the B
  factors (weights ``cᵢ``) separately; they need adapters of one rank, like ``linear``.
* ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd`` — the same merging
  methods applied to the full updates ``sᵢ·Bᵢ·Aᵢ`` (weights ``wᵢ``), then the truncated SVD at
  ``svd_rank``; any ranks.

``density`` (the fraction of entries kept) is needed by every pruning method, ``majority_sign_method``
("total" or "frequency") is read by the TIES ones.  DARE draws from torch's global generator in
PEFT's order, so ``torch.manual_seed`` before the call gives PEFT's result.  With one adapter every
method is ``linear``, as in PEFT.  The new adapter has scaling 1 (alpha = r per layer) and is not
activated.  A layer only some of the adapters adapt combines those (the others add nothing there).

**Whole trained modules** (``modules_to_save``, e.g. a classifier head every classification run
trains) have no factors.  PEFT refuses to combine them, and so does :func:`add_weighted_adapter`
unless ``combine_modules_to_save=True`` (``lora-studio combine`` passes it): then the new adapter's
copy is ``original + merged(copyᵢ − original)``, the adapters' changes to the module combined by
the same method on the full tensors (task arithmetic for linear/cat/svd, TIES/DARE/magnitude pruning
for those); an adapter without a copy of that module changes it by nothing.  There is no PEFT oracle for this; the weights (1, 0) give the first adapter's
copy exactly.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from torch import nn

from ..layers import AdapterLayer, ConvLora, ModulesToSave, adapter_layers
from ..variants import get_variant
from .config import LoraConfig
from .lifecycle import adapter_state, require_adapter_state, set_active_adapter
from .merging_methods import DENSITY_METHODS, SIGN_METHODS, merge_settings_problem, merge_tensors

CombinationType = Literal[
    "linear", "cat", "svd",
    "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties", "dare_ties_svd",
    "magnitude_prune", "magnitude_prune_svd",
]  # fmt: skip

#: Every combination type with a one-line description, in the order a form lists them.
COMBINATION_TYPES: dict[str, str] = {
    "linear": "A = Σ cᵢAᵢ, B = Σ cᵢBᵢ (cᵢ = sqrt(weight·scale)); one rank; exact for one adapter only",
    "cat": "stack the factors: exact weighted sum, rank = sum of ranks",
    "svd": "truncated SVD of the exact weighted sum at svd_rank; any ranks",
    "ties": "TIES on the factors: prune to density, elect signs, average agreeing entries; one rank",
    "ties_svd": "TIES on the full updates, then SVD at svd_rank; any ranks",
    "dare_linear": "DARE on the factors: random drop to density and rescale, then weighted sum; one rank",
    "dare_linear_svd": "DARE on the full updates, then SVD at svd_rank; any ranks",
    "dare_ties": "DARE drop and rescale, then TIES sign election and average, on the factors; one rank",
    "dare_ties_svd": "DARE + TIES on the full updates, then SVD at svd_rank; any ranks",
    "magnitude_prune": "keep the density fraction of largest entries of each factor, weighted sum; one rank",
    "magnitude_prune_svd": "magnitude pruning of the full updates, then SVD at svd_rank; any ranks",
}
#: The methods that work on the factors and so need one rank per layer.
FACTOR_COMBINATIONS: tuple[str, ...] = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: The methods that end in a truncated SVD of a full update.
SVD_COMBINATIONS: tuple[str, ...] = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
#: The combination types that read ``density`` / ``majority_sign_method``.
DENSITY_COMBINATIONS: tuple[str, ...] = tuple(t for t in COMBINATION_TYPES if t.removesuffix("_svd") in DENSITY_METHODS)
SIGN_COMBINATIONS: tuple[str, ...] = tuple(t for t in COMBINATION_TYPES if t.removesuffix("_svd") in SIGN_METHODS)

# Variants whose trained adapter is the same plain A/B LoRA adapter (LoRA+ only trains it differently).
_PLAIN_LORA = {"lora", "lora_plus"}


def combination_problem(
    model: nn.Module,
    adapters: list[str],
    weights: list[float],
    combination_type: str = "svd",
    *,
    svd_rank: int | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
    new_name: str | None = None,
    combine_modules_to_save: bool = False,
) -> str | None:
    """Why :func:`add_weighted_adapter` would refuse these arguments (with the method that would work),
    or None when it would not.  Changes nothing: a form can call it on every edit."""
    state = adapter_state(model)
    if state is None:
        return "this model has no adapters; load or attach the adapters to combine first"
    if not adapters or len(adapters) != len(weights):
        return "adapters and weights must be non-empty lists of the same length (one weight per adapter)"
    missing = [a for a in adapters if a not in state.configs]
    if missing:
        return f"no adapter named {missing[0]!r}; this model has: {', '.join(state.configs)}"
    if len(set(adapters)) != len(adapters):
        return "each adapter may appear only once; give a repeated adapter one summed weight"
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) for w in weights):
        return f"weights must be finite numbers; got {list(weights)}"
    if new_name is not None and new_name in state.configs:
        return f"adapter {new_name!r} already exists; choose another name"
    if combination_type not in COMBINATION_TYPES:
        return f"combination_type must be one of {', '.join(COMBINATION_TYPES)}; got {combination_type!r}"
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank < 1):
        return f"svd_rank must be a whole number >= 1, got {svd_rank!r}"
    method = _effective_type(combination_type, adapters)
    base_method = method.removesuffix("_svd") if method != "svd" else "linear"
    if method in DENSITY_COMBINATIONS or method in SIGN_COMBINATIONS:
        problem = merge_settings_problem(base_method, density, majority_sign_method)
        if problem:
            return problem
    whole = list(dict.fromkeys(m for a in adapters for m in state.configs[a].modules_to_save))
    if whole and not combine_modules_to_save:
        return (
            f"adapters that train whole modules (modules_to_save: {', '.join(whole)}) cannot be combined by PEFT's "
            "methods, which weigh low-rank factors; pass combine_modules_to_save=True (lora-studio combine does) "
            "to combine each module's changes by the same method, or combine adapters without modules_to_save"
        )
    variants = {a: state.configs[a].variant for a in adapters}
    for a, name in variants.items():
        variant = get_variant(name)
        if not variant.combinable:
            return (
                f"adapter {a!r} uses variant {variant.title!r}, whose update is not a plain pair of LoRA factors, "
                "so no combination method applies; merge it into the base instead (merge / export merged), or "
                "combine plain LoRA adapters"
            )
    kinds = {("lora" if v in _PLAIN_LORA else v) for v in variants.values()}
    if len(kinds) > 1:
        listed = ", ".join(f"{a}: {v}" for a, v in variants.items())
        return (
            f"adapters of different variants cannot be combined ({listed}): their factors live on different "
            "bases; combine adapters of one variant"
        )
    if method in FACTOR_COMBINATIONS:
        for name, layer in adapter_layers(model):
            ranks = [layer.r[a] for a in adapters if a in layer.adapter_names]
            if len(set(ranks)) > 1:
                svd_form = "svd" if method == "linear" else f"{method}_svd"
                return (
                    f"{method!r} adds the factors entry by entry, so it needs equal ranks; layer {name!r} has "
                    f"ranks {ranks}. Use {svd_form!r} or 'cat', which work for any ranks"
                )
    if not any(any(a in layer.adapter_names for a in adapters) for _, layer in adapter_layers(model)):
        return "none of these adapters adapts a layer of this model; nothing to combine"
    for name, layer in adapter_layers(model):
        if isinstance(layer, ConvLora) and layer.grouped and any(a in layer.adapter_names for a in adapters):
            return (f"layer {name!r} is a grouped convolution (groups={layer.base_layer.groups}): its LoRA B is "
                    "grouped, so the combination methods, which treat B·A as one matrix pair, would compute another "
                    "update; combine adapters that leave grouped convolutions out")
    return None


@torch.no_grad()
def add_weighted_adapter(
    model: nn.Module,
    adapters: list[str],
    weights: list[float],
    new_name: str,
    combination_type: CombinationType = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
    density: float | None = None,
    majority_sign_method: Literal["total", "frequency"] = "total",
    *,
    combine_modules_to_save: bool = False,
) -> None:
    """Create adapter ``new_name`` from a weighted combination of existing ``adapters`` (see the module
    docstring for the methods; PEFT's arguments and semantics).

    ``svd_rank`` defaults to the largest rank among the sources; ``svd_clamp`` clips the SVD factors at
    that quantile of their entries, ``svd_driver`` picks the cuSOLVER routine (CUDA only) and
    ``svd_full_matrices`` is accepted for PEFT's signature (the truncated result is the same).
    ``combine_modules_to_save`` (not PEFT's): combine adapters' whole trained modules too (see the
    module docstring); without it such adapters are refused, as PEFT refuses them.  A
    combination that is not defined raises ``ValueError`` with the reason and the method that works;
    the model is then unchanged.  The new adapter is not activated.
    """
    problem = combination_problem(
        model, adapters, weights, combination_type, svd_rank=svd_rank, density=density,
        majority_sign_method=majority_sign_method, new_name=new_name, combine_modules_to_save=combine_modules_to_save,
    )  # fmt: skip
    if problem:
        raise ValueError(problem)
    if svd_clamp is not None and not 0 < svd_clamp <= 1:
        raise ValueError(f"svd_clamp is a quantile, 0 < svd_clamp <= 1; got {svd_clamp!r}")
    state = require_adapter_state(model, None)
    method = _effective_type(combination_type, adapters)
    settings = {"density": density, "majority_sign_method": majority_sign_method}
    svd = {"rank": svd_rank, "clamp": svd_clamp, "full_matrices": svd_full_matrices, "driver": svd_driver}

    # Compute every layer's factors first, so a failure part-way leaves the model without a half-made adapter.
    planned: list[tuple[str, AdapterLayer, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = []
    for name, layer in adapter_layers(model):
        present = [(a, float(w)) for a, w in zip(adapters, weights) if a in layer.adapter_names]
        if present:
            planned.append((name, layer, {key: _combine(layer, key, present, method, settings, svd)
                                          for key in layer.weight_slots()}))  # fmt: skip
    copies = [(name, module, _combined_copy(module, adapters, weights, method, settings))
              for name, module in model.named_modules()
              if isinstance(module, ModulesToSave) and any(a in module.adapter_names for a in adapters)]  # fmt: skip
    ranks: dict[str, int] = {}
    for name, layer, new_factors in planned:
        rank = next(iter(new_factors.values()))[0].shape[0]
        layer.add_adapter(new_name, r=rank, alpha=float(rank), dropout=0.0, init="default", use_rslora=False)
        for key, (a_new, b_new) in new_factors.items():
            a, b = layer.stored_factors(new_name, key)
            a.copy_(a_new.reshape(a.shape))
            b.copy_(b_new.reshape(b.shape))
        ranks[name] = rank

    for _, module, values in copies:
        module.add_adapter(new_name)
        copy_state = module.modules_to_save[new_name].state_dict(keep_vars=True)
        for key, value in values.items():
            copy_state[key].copy_(value.to(copy_state[key].dtype))

    first = state.configs[adapters[0]]
    saved = list(dict.fromkeys(entry for a in adapters for entry in state.configs[a].modules_to_save))
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    state.configs[new_name] = LoraConfig(
        r=common,
        alpha=float(common),
        targets=list(ranks),
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != common},
        alpha_pattern={re.escape(n): float(r) for n, r in ranks.items() if r != common},
        bias=first.bias,
        variant=first.variant,
        modules_to_save=saved,
    )
    set_active_adapter(model, adapter_state(model).active)  # re-apply trainability: the new one stays frozen


def _combined_copy(
    module: ModulesToSave, adapters: list[str], weights: list[float], kind: str, settings: dict
) -> dict[str, torch.Tensor]:
    """The new adapter's copy of a whole trained module: original + the adapters' changes combined."""
    original = module.original_module.state_dict()
    copies = {a: module.modules_to_save[a].state_dict() for a in adapters if a in module.adapter_names}
    method = kind.removesuffix("_svd") if kind not in ("linear", "cat", "svd") else "linear"
    values: dict[str, torch.Tensor] = {}
    for key, base in original.items():
        if not base.is_floating_point():
            values[key] = base.clone()  # counters (BatchNorm's num_batches_tracked) stay the original's
            continue
        zero = torch.zeros_like(base, dtype=torch.float32)
        deltas = [(copies[a][key].float() - base.float()) if a in copies else zero for a in adapters]
        values[key] = base.float() + merge_tensors(method, deltas, [float(w) for w in weights], **settings)
    return values


def _effective_type(combination_type: str, adapters: list[str]) -> str:
    # PEFT: with a single adapter every method is 'linear' (there is nothing to prune against or elect).
    return "linear" if len(adapters) == 1 else combination_type


def _combine(
    layer: AdapterLayer, key: str, present: list[tuple[str, float]], kind: str, settings: dict, svd: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) for one adapted weight, in the stored factors' shapes (float32)."""
    if kind == "cat":
        a_parts, b_parts = [], []
        for adapter, weight in present:
            a, b = layer.stored_factors(adapter, key)
            a_parts.append(a.float() * (weight * layer.scaling[adapter]))  # PEFT puts the weight on A
            b_parts.append(b.float())
        return torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
    if kind in FACTOR_COMBINATIONS:
        a_list, b_list, a_w, b_w = [], [], [], []
        for adapter, weight in present:
            a, b = layer.stored_factors(adapter, key)
            scaled = weight * layer.scaling[adapter]
            root = math.sqrt(abs(scaled))
            a_list.append(a.float())
            b_list.append(b.float())
            a_w.append(math.copysign(root, scaled) if scaled else 0.0)  # the sign on one side only
            b_w.append(root)
        # A first, then B: the order PEFT draws DARE's random masks in.
        a_new = merge_tensors(kind, a_list, a_w, **settings)
        b_new = merge_tensors(kind, b_list, b_w, **settings)
        return a_new, b_new
    slot = layer.weight_slots()[key]
    deltas = [layer.delta_weight(adapter, key).float() for adapter, _ in present]  # in the weight's shape
    merged = merge_tensors(
        "linear" if kind == "svd" else kind.removesuffix("_svd"), deltas, [w for _, w in present], **settings
    )
    matrix = slot.matrix(merged)  # the B @ A layout
    rank = svd["rank"] or max(layer.r[adapter] for adapter, _ in present)
    rank = min(rank, *matrix.shape)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False, driver=svd["driver"] if matrix.is_cuda else None)
    b_new = u[:, :rank] * s[:rank]  # PEFT's split: B = U·S, A = Vh
    a_new = vh[:rank]
    if svd["clamp"] is not None:
        high = torch.quantile(torch.cat([b_new.flatten(), a_new.flatten()]), svd["clamp"])
        b_new, a_new = b_new.clamp(-high, high), a_new.clamp(-high, high)
    a_stored, b_stored = layer.stored_factors(present[0][0], key)
    return a_new.reshape(rank, *a_stored.shape[1:]), b_new.reshape(b_stored.shape[0], rank, *b_stored.shape[2:])


__all__ = [
    "COMBINATION_TYPES",
    "DENSITY_COMBINATIONS",
    "FACTOR_COMBINATIONS",
    "SIGN_COMBINATIONS",
    "SVD_COMBINATIONS",
    "CombinationType",
    "add_weighted_adapter",
    "combination_problem",
]
