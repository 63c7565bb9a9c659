"""Pruning-aware LoRA: gradual magnitude pruning of the adapter's own entries.

The adapter trains as standard LoRA; between ``start`` and ``end`` (fractions of
training), every ``interval`` steps, the smallest-magnitude entries of each factor
are masked out until the factor reaches the sparsity of Zhu & Gupta's cubic
schedule (2017, eq. 1)::

    s_t = s_f + (0 - s_f) · (1 - (t - t_start) / (t_end - t_start))³

Each factor is pruned to the same sparsity (layer-wise, as in their paper); a pruned
entry stays pruned (its mask is monotone) and its stored value is set to zero.  The
remaining training steps after ``end`` let the network recover.  The update stays
``s · (B ⊙ M_B)(A ⊙ M_A)``, so it merges like LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .entry_masks import EntryMaskBehaviour, mask_sparsity, zero_all_masked_entries
from .layer_state import layers_with_behaviour
from .registry import Variant, register_variant
from .schedules import check_fraction_window, check_positive_int, check_sparsity, cubic_ramp, schedule_steps


@dataclass
class PruningLoraSettings:
    """Settings of Pruning-aware LoRA."""

    target_sparsity: float = field(
        default=0.5, metadata={"help": "Fraction of the entries of A and of B pruned by the end, in [0, 1)."}
    )
    start: float = field(
        default=0.1, metadata={"help": "Fraction of training after which pruning starts (the adapter learns first)."}
    )
    end: float = field(
        default=0.7,
        metadata={"help": "Fraction of training at which the target sparsity is reached; the rest recovers."},
    )
    interval: int = field(default=10, metadata={"help": "Steps between two pruning rounds while the sparsity grows."})

    def __post_init__(self) -> None:
        check_sparsity("target_sparsity", self.target_sparsity)
        check_fraction_window("start", self.start, "end", self.end)
        check_positive_int("interval", self.interval)


class PruningLoraBehaviour(EntryMaskBehaviour):
    """LoRA whose masks start all ones and lose the smallest entries on a schedule."""

    @torch.no_grad()
    def prune_to(self, layer: AdapterLayer, adapter: str, sparsity: float) -> None:
        """Mask the smallest-magnitude unmasked entries until each factor has ``round(sparsity · numel)`` off.

        Masked entries sort first (key -1 below every magnitude), so masks only ever grow; a stable sort
        breaks ties (e.g. a B still at zero) by position, so the count is exact.
        """
        for factor, mask in self.masked_pairs(layer, adapter):
            wanted = round(sparsity * mask.numel())
            if wanted <= int((~mask).sum()):
                continue
            keys = factor.detach().abs().float().masked_fill(~mask, -1.0).flatten()
            order = torch.argsort(keys, stable=True)
            mask.view(-1)[order[:wanted]] = False
            factor.masked_fill_(~mask, 0.0)


class PruningLora(Variant):
    name = "pruning"
    title = "Pruning-aware LoRA"
    description = (
        "LoRA trained with gradual magnitude pruning of its own entries: after a first stretch of normal "
        "training, the smallest entries of A and B are pruned every few steps on a cubic schedule until each "
        "factor reaches the target sparsity, and the remaining steps let the adapter recover. Pruned entries "
        "stay at zero. The update is still a low-rank product, so it merges into the base exactly; the masks "
        "are saved with the adapter."
    )
    paper = (
        "Zhu & Gupta, 'To prune, or not to prune: exploring the efficacy of pruning for model compression', "
        "2017 (arXiv:1710.01878); Han et al., 'Learning both Weights and Connections for Efficient Neural "
        "Networks', NeurIPS 2015 (arXiv:1506.02626); applied to the factors of LoRA (arXiv:2106.09685)"
    )
    settings_class = PruningLoraSettings
    peft_type = None  # PEFT's LoRA format has no place for the masks

    def behaviour(self, layer: AdapterLayer, settings: PruningLoraSettings) -> AdapterBehaviour:
        return PruningLoraBehaviour()

    def after_step(
        self, model: nn.Module, adapter: str, settings: PruningLoraSettings, step: int, total_steps: int
    ) -> None:
        """Prune to the scheduled sparsity every ``interval`` steps of the window, and every step after it
        until the target is reached (so a run always ends at the target, whatever ``interval``)."""
        zero_all_masked_entries(model, adapter)  # entries pruned earlier stay exactly zero
        done = step + 1  # steps completed
        first, last = schedule_steps(settings.start, settings.end, total_steps)
        if done <= first or (done < last and (done - first) % settings.interval):
            return
        sparsity = cubic_ramp(done, first, last, 0.0, settings.target_sparsity)
        for _, layer, behaviour in layers_with_behaviour(model, adapter, PruningLoraBehaviour):
            behaviour.prune_to(layer, adapter, sparsity)

    def summary(self, model: nn.Module, adapter: str, settings: PruningLoraSettings) -> dict[str, Any]:
        """The sparsity reached (overall and per layer) and the target."""
        return {**mask_sparsity(model, adapter), "target_sparsity": settings.target_sparsity}


register_variant(PruningLora())
