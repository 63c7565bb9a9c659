"""Merging methods on plain tensors: task arithmetic, magnitude pruning, TIES and DARE.

Each method takes one tensor per adapter (all of one shape) and one weight per adapter, and
returns the merged tensor.  The semantics are PEFT's (``peft.utils.merge_utils``), so an adapter
combined here equals PEFT's ``add_weighted_adapter`` on the same adapters:

* ``linear`` (task arithmetic) — ``Σ wᵢ·tᵢ``.
* ``magnitude_prune`` — keep the ``density`` fraction of each tensor's entries with the largest
  magnitude, zero the rest, then ``Σ wᵢ·tᵢ``.
* ``ties`` (Yadav et al. 2023, arXiv:2306.01708) — prune by magnitude, elect a sign per entry
  (``"total"``: the sign of the sum of the pruned tensors; ``"frequency"``: the more common sign),
  then average the weighted entries that agree with it (entries pruned to zero do not count).
* ``dare_linear`` / ``dare_ties`` (Yu et al. 2023, arXiv:2311.03099) — drop entries at random,
  keeping each with probability ``density`` and dividing the kept ones by ``density`` (so the
  expectation is unchanged), then task arithmetic or the TIES sign election and average.  The
  draws come from torch's global generator, one ``bernoulli`` per tensor in the order given,
  exactly as PEFT draws them: the same seed gives the same result in both.

The sign election looks at the pruned tensors *before* the weights are applied (PEFT's rule).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch

MergeMethod = Literal["linear", "magnitude_prune", "ties", "dare_linear", "dare_ties"]
MajoritySign = Literal["total", "frequency"]

MERGE_METHODS: tuple[str, ...] = ("linear", "magnitude_prune", "ties", "dare_linear", "dare_ties")
MAJORITY_SIGN_METHODS: tuple[str, ...] = ("total", "frequency")
#: Methods that read ``density`` and those that read ``majority_sign_method``.
DENSITY_METHODS: tuple[str, ...] = ("magnitude_prune", "ties", "dare_linear", "dare_ties")
SIGN_METHODS: tuple[str, ...] = ("ties", "dare_ties")


def prune_by_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its ``int(density·numel)`` largest-magnitude entries set to zero."""
    if density >= 1:
        return tensor
    keep = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[torch.topk(tensor.abs().reshape(-1), k=keep, largest=True).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def prune_at_random(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density`` and divide it by ``density``."""
    if density >= 1:
        return tensor  # no draw, as PEFT: the random stream stays where it was
    keep = torch.bernoulli(torch.full_like(tensor, density))
    return tensor * keep / density


def majority_sign_mask(stacked: torch.Tensor, method: MajoritySign = "total") -> torch.Tensor:
    """Per entry, which of the stacked tensors (dim 0) agree with the elected sign (ties elect +)."""
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    elected = torch.where(votes >= 0, 1, -1)
    return sign == elected


def disjoint_mean(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean, per entry, of the stacked weighted tensors the mask keeps (0 where it keeps none)."""
    kept = mask.sum(dim=0)
    return (weighted * mask).sum(dim=0) / torch.clamp(kept, min=1.0)


def merge_tensors(
    method: MergeMethod,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | torch.Tensor,
    *,
    density: float | None = None,
    majority_sign_method: MajoritySign = "total",
) -> torch.Tensor:
    """Merge one tensor per adapter with ``method`` (see the module docstring); shapes must agree."""
    problem = merge_settings_problem(method, density, majority_sign_method)
    if problem:
        raise ValueError(problem)
    if not tensors or len(tensors) != len(weights):
        raise ValueError("tensors and weights must be non-empty and of the same length")
    if method in DENSITY_METHODS and density is not None and density >= 1:
        warnings.warn(f"density {density} >= 1: nothing is pruned", stacklevel=2)
    if method in ("magnitude_prune", "ties"):
        tensors = [prune_by_magnitude(t, density) for t in tensors]
    elif method in ("dare_linear", "dare_ties"):
        tensors = [prune_at_random(t, density) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    w = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
    weighted = stacked * w.reshape(w.shape + (1,) * (stacked.dim() - 1))
    if method in SIGN_METHODS:
        return disjoint_mean(weighted, majority_sign_mask(stacked, majority_sign_method))
    return weighted.sum(dim=0)


def merge_settings_problem(method: str, density: float | None, majority_sign_method: str = "total") -> str | None:
    """What is wrong with these merge settings, or None."""
    if method not in MERGE_METHODS:
        return f"merge method must be one of {', '.join(MERGE_METHODS)}; got {method!r}"
    if method in DENSITY_METHODS:
        if density is None:
            return (
                f"{method!r} needs density (the fraction of each update's entries kept, 0 < density <= 1), "
                "e.g. density=0.5"
            )
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            return f"density must be a number with 0 < density <= 1 (the fraction kept); got {density!r}"
    if method in SIGN_METHODS and majority_sign_method not in MAJORITY_SIGN_METHODS:
        return f"majority_sign_method must be 'total' or 'frequency'; got {majority_sign_method!r}"
    return None


__all__ = [
    "DENSITY_METHODS",
    "MAJORITY_SIGN_METHODS",
    "MERGE_METHODS",
    "SIGN_METHODS",
    "MajoritySign",
    "MergeMethod",
    "disjoint_mean",
    "majority_sign_mask",
    "merge_settings_problem",
    "merge_tensors",
    "prune_at_random",
    "prune_by_magnitude",
]
