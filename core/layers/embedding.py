"""LoRA for ``nn.Embedding``, with PEFT's layout and the padding row kept fixed.

``lora_embedding_A`` is (r, num_embeddings) and ``lora_embedding_B`` is
(embedding_dim, r); the update of the table is ``s · (B @ A)ᵀ``.  The padding
index's column of A starts at zero and receives no gradient (``F.embedding``'s
``padding_idx``), so the padding row of the merged table stays what it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, WeightSlot


class EmbeddingLora(AdapterLayer):
    """``y = base(ids) + s · embed(ids, Aᵀ) @ Bᵀ``."""

    fast_paths = "none"  # a lookup, not a product: no fused function for it
    factor_attributes = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        if base_layer.max_norm is not None:
            raise TypeError(embedding_max_norm_reason())
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        return r * (base_layer.num_embeddings + base_layer.embedding_dim)

    def weight_slots(self) -> dict[str, WeightSlot]:
        return {"weight": WeightSlot(self.base_layer.weight, transposed=True)}

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A[adapter], self.lora_embedding_B[adapter]

    def create_factors(self, adapter: str, r: int) -> None:
        kw = {"device": self.factor_device(), "dtype": self.factor_dtype()}
        base = self.base_layer
        self.lora_embedding_A[adapter] = nn.Parameter(torch.empty(r, base.num_embeddings, **kw))
        self.lora_embedding_B[adapter] = nn.Parameter(torch.empty(base.embedding_dim, r, **kw))

    def reset_factors(self, adapter: str, init: str) -> None:
        # PEFT's choice for embeddings: A zero, B Gaussian (the product is zero either way).
        nn.init.zeros_(self.lora_embedding_A[adapter])
        nn.init.normal_(self.lora_embedding_B[adapter])

    def reimpose_constraints(self, adapter: str) -> None:
        if self.base_layer.padding_idx is not None:
            self.lora_embedding_A[adapter][:, self.base_layer.padding_idx] = 0.0

    def project_down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        # x holds token ids: "projecting through A" is looking up its columns; padding_idx keeps
        # the padding column's gradient at zero.
        return F.embedding(x, a.t(), padding_idx=self.base_layer.padding_idx)

    def project_up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        return h @ b.t()

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, weight, padding_idx=self.base_layer.padding_idx)


def embedding_max_norm_reason() -> str:
    return (
        "Embedding with max_norm rescales its own table in place during forward, so no adapter "
        "update could be merged into it exactly; leave this layer out of targets"
    )
