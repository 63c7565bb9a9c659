"""LoRA+: standard LoRA trained with a larger learning rate for B than for A (Hayou et al. 2024).

The adapter, its forward and its merge are plain LoRA's; only the optimizer
differs.  The paper's analysis of the large-width limit shows that one learning
rate for A and B cannot learn features efficiently: ``η_B / η_A`` should grow
with the width, so in practice a fixed ratio ``λ = η_B / η_A`` (at least 1 per the
reference code; 2^4 = 16 is the usual recommendation) is applied through optimizer
parameter groups::

    lora_A ............................ lr
    lora_B ............................ lr · lr_ratio
    embedding adapters (A and B) ...... embedding_lr   (the reference code's choice)
    everything else (biases, modules_to_save) ... lr

The groups follow PEFT's ``create_loraplus_optimizer`` with one deliberate
difference: PEFT also gives every 1-D parameter (biases, LayerNorm weights of a
fully trained module) B's raised rate; those are not LoRA factors, the paper's
argument says nothing about them, so here they keep the base rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .registry import Variant, register_variant

_EMBEDDING_FACTORS = ("lora_embedding_A", "lora_embedding_B")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoraPlusSettings:
    """LoRA+'s learning-rate ratio and the embedding adapters' own rate."""

    lr_ratio: float = field(
        default=16.0,
        metadata={"help": "Learning rate of B divided by that of A (the paper's lambda); usually >= 1, 16 is common."},
    )
    embedding_lr: float = field(
        default=1e-6,
        metadata={
            "help": "Fixed learning rate of adapters on embedding layers (A and B), as in the LoRA+ "
            "reference code and PEFT; independent of the run's learning rate."
        },
    )

    def __post_init__(self) -> None:
        if not _number(self.lr_ratio) or self.lr_ratio <= 0:
            raise ValueError(f"lr_ratio must be a number > 0, got {self.lr_ratio!r}")
        if not _number(self.embedding_lr) or self.embedding_lr < 0:
            raise ValueError(f"embedding_lr must be a number >= 0, got {self.embedding_lr!r}")


def loraplus_role(name: str) -> str:
    """Which LoRA+ group a parameter belongs to, from its name: 'A', 'B', 'embedding' or 'other'."""
    parts = set(name.split("."))
    if parts.intersection(_EMBEDDING_FACTORS):
        return "embedding"
    if "lora_B" in parts:
        return "B"
    if "lora_A" in parts:
        return "A"
    return "other"


class LoraPlus(Variant):
    name = "lora_plus"
    title = "LoRA+"
    description = (
        "LoRA trained with a larger learning rate for B than for A (lr_ratio, 16 by default). The paper "
        "shows that in wide models a single learning rate for both factors learns features inefficiently; "
        "raising B's rate speeds up fine-tuning (up to about 2x) and often improves accuracy, at no extra "
        "cost. The adapter itself is plain LoRA: it starts as the base model, merges and saves as LoRA."
    )
    paper = "Hayou, Ghosh and Yu, 'LoRA+: Efficient Low Rank Adaptation of Large Models', ICML 2024 (arXiv:2402.12354)"
    settings_class = LoraPlusSettings
    combinable = True  # plain A/B factors: the trained adapter is an ordinary LoRA adapter

    def param_groups(
        self, named_params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, settings: Any
    ) -> list[dict[str, Any]]:
        """A at ``lr``, B at ``lr · lr_ratio``, embedding adapters at ``embedding_lr``, the rest at ``lr``."""
        rates = {"A": lr, "B": lr * settings.lr_ratio, "embedding": settings.embedding_lr, "other": lr}
        params: dict[str, list[nn.Parameter]] = {role: [] for role in rates}
        for name, param in named_params:
            params[loraplus_role(name)].append(param)
        # "name" is kept in each group (optimizers carry extra keys) so logs and tests can tell them apart.
        return [
            {"name": f"loraplus_{role}", "params": group, "lr": rates[role], "weight_decay": weight_decay}
            for role, group in params.items()
            if group
        ]


register_variant(LoraPlus())
