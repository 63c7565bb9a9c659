"""AdaLoRA (Zhang et al. 2023): SVD-form adapters whose rank budget moves to where it matters.

Each adapted weight gets ``P Λ Q`` (see :mod:`.adalora_layer`).  Training adds the
orthogonality penalty ``γ · mean ||PᵀP−I||² + ||QQᵀ−I||²`` and, after every step,
smooths each entry's importance; the total number of singular values in use (the
budget) shrinks on a cubic schedule (section 3.3) from the initial total rank to
``target_rank × number of adapted weights``::

    budget
    Σ r ────┐
            ╲            ← every delta_t steps: keep the budget's most important
             ╲__            triplets across *all* layers, mask the rest
                ‾‾‾───── target_rank × weights
    ────────┼──────────┼────► training
          tinit      tfinal        (then: fine-tune at the final ranks)

The budget is global, so layers end with different ranks: the summary reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .adalora_layer import AdaLoraBehaviour
from .layer_state import layers_with_behaviour
from .registry import Variant, register_variant
from .schedules import check_fraction_window, check_positive_int, cubic_ramp, schedule_steps


@dataclass
class AdaLoraSettings:
    """Settings of AdaLoRA; the initial rank of every layer is the config's ``r``."""

    target_rank: int = field(
        default=4,
        metadata={"help": "Average final rank per adapted weight; the total budget is this × the number of "
                          "adapted weights (PEFT's target_r). At most r, the initial rank."},
    )  # fmt: skip
    tinit: float = field(
        default=0.1, metadata={"help": "Fraction of training at the initial rank before the budget starts to shrink."}
    )
    tfinal: float = field(
        default=0.7,
        metadata={"help": "Fraction of training at which the budget reaches its target; the rest fine-tunes."},
    )
    delta_t: int = field(default=10, metadata={"help": "Steps between two reallocations while the budget shrinks."})
    beta1: float = field(default=0.85, metadata={"help": "Moving-average factor of the sensitivity (β1), in (0, 1)."})
    beta2: float = field(default=0.85, metadata={"help": "Moving-average factor of the uncertainty (β2), in (0, 1)."})
    orth_reg_weight: float = field(
        default=0.5, metadata={"help": "γ: weight of the orthogonality penalty on P and Q (0 turns it off)."}
    )

    def __post_init__(self) -> None:
        check_positive_int("target_rank", self.target_rank)
        check_fraction_window("tinit", self.tinit, "tfinal", self.tfinal)
        check_positive_int("delta_t", self.delta_t)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
        weight = self.orth_reg_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"orth_reg_weight must be a number >= 0; got {weight!r}")


Triplets = list[tuple[str, AdapterLayer, AdaLoraBehaviour, str]]  # (layer name, layer, behaviour, weight key)


def triplet_groups(model: nn.Module, adapter: str) -> Triplets:
    """Every adapted weight of ``adapter`` (one group of r triplets each), with its layer and behaviour."""
    return [
        (name, layer, behaviour, key)
        for name, layer, behaviour in layers_with_behaviour(model, adapter, AdaLoraBehaviour)
        for key in layer.weight_slots()
    ]


class AdaLora(Variant):
    name = "adalora"
    title = "AdaLoRA"
    description = (
        "Adaptive budget allocation: each update is written in SVD form P·Λ·Q, kept near-orthogonal by a "
        "penalty, and the importance of every singular value is tracked during training (sensitivity "
        "smoothed by moving averages, times its uncertainty). A cubic schedule shrinks the total rank from "
        "the initial rank r on every layer to target_rank per layer on average, keeping the most important "
        "triplets wherever they are, so layers end with different ranks. Λ starts at zero, so training "
        "starts from the base model; the update merges into the base exactly."
    )
    paper = (
        "Zhang et al., 'Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning', ICLR 2023 (arXiv:2303.10512)"
    )
    settings_class = AdaLoraSettings
    peft_type = None  # PEFT's ADALORA format keys and shapes differ (lora_E is r×1, no mask); studio-only here

    def behaviour(self, layer: AdapterLayer, settings: AdaLoraSettings) -> AdapterBehaviour:
        return AdaLoraBehaviour(settings.target_rank, settings.beta1, settings.beta2)

    def regularization(self, model: nn.Module, adapter: str, settings: AdaLoraSettings) -> torch.Tensor | None:
        """``γ`` times the mean orthogonality penalty over adapted weights (section 3.1; the mean, as PEFT
        takes, keeps γ's meaning independent of how many layers are adapted)."""
        for _, _, behaviour in layers_with_behaviour(model, adapter, AdaLoraBehaviour):
            behaviour.start_step()  # the loop asks for this once per step, before its backward pass
        if settings.orth_reg_weight == 0:
            return None
        terms = [t for _, layer, b in layers_with_behaviour(model, adapter, AdaLoraBehaviour)
                 for t in b.orthogonality(layer, adapter)]  # fmt: skip
        return settings.orth_reg_weight * torch.stack(terms).mean() if terms else None

    def after_step(
        self, model: nn.Module, adapter: str, settings: AdaLoraSettings, step: int, total_steps: int
    ) -> None:
        """Update the importance scores, then reallocate the budget when the schedule says so.

        Scores are smoothed every step until ``tfinal``; between ``tinit`` and ``tfinal`` the budget is
        reallocated every ``delta_t`` steps; from ``tfinal`` on it is the target, set once and then
        kept, so the ranks are fixed for the final fine-tuning and every run ends exactly on target.
        """
        groups = triplet_groups(model, adapter)
        if not groups:
            return
        done = step + 1  # steps completed
        first, last = schedule_steps(settings.tinit, settings.tfinal, total_steps)
        for _, layer, behaviour in layers_with_behaviour(model, adapter, AdaLoraBehaviour):
            behaviour.zero_masked_values(layer, adapter)
            if done < last:
                behaviour.update_importance(layer, adapter)
        initial, target = _initial_budget(groups, adapter), _target_budget(groups, settings)
        if done >= last:
            if _rank_in_use(groups, adapter) != target:
                allocate_budget(groups, adapter, target)
        elif done > first and (done - first) % settings.delta_t == 0:
            allocate_budget(groups, adapter, int(cubic_ramp(done, first, last, initial, target)))

    def summary(self, model: nn.Module, adapter: str, settings: AdaLoraSettings) -> dict[str, Any]:
        """The rank each adapted weight ended with, their total, the target and the initial total."""
        groups = triplet_groups(model, adapter)
        several = {name for name, layer, _, _ in groups if len(layer.weight_slots()) > 1}
        ranks = {
            (f"{name}.{key}" if name in several else name): behaviour.rank(layer, adapter, key)
            for name, layer, behaviour, key in groups
        }
        return {
            "final_ranks": ranks,
            "total_rank": sum(ranks.values()),
            "target_total_rank": _target_budget(groups, settings),
            "initial_total_rank": _initial_budget(groups, adapter),
        }


def _initial_budget(groups: Triplets, adapter: str) -> int:
    return sum(layer.r[adapter] for _, layer, _, _ in groups)


def _target_budget(groups: Triplets, settings: AdaLoraSettings) -> int:
    return settings.target_rank * len(groups)


def _rank_in_use(groups: Triplets, adapter: str) -> int:
    return sum(behaviour.rank(layer, adapter, key) for _, layer, behaviour, key in groups)


def allocate_budget(groups: Triplets, adapter: str, budget: int) -> None:
    """Keep the ``budget`` triplets with the highest scores across all layers and mask the rest.

    ``topk`` picks exactly ``budget`` even when scores tie (PEFT's threshold comparison can drop more).
    Under DDP each process has seen only its own gradients, so the scores are summed over processes
    first: every process then keeps the same triplets.
    """
    parts = [behaviour.triplet_scores(layer, adapter, key) for _, layer, behaviour, key in groups]
    scores = torch.cat([p.to(parts[0].device) for p in parts])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(scores)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, min(budget, keep.numel())).indices] = True
    for (_, layer, behaviour, key), part in zip(groups, torch.split(keep, [p.numel() for p in parts])):
        behaviour.keep_triplets(layer, adapter, key, part)


register_variant(AdaLora())
