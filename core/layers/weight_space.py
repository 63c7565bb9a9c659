"""LoRA applied in weight space, for layers whose forward reads several weights directly.

``nn.MultiheadAttention`` (packed q/k/v in-projection plus the out-projection,
as in torchvision's ViT) and the recurrent cells (``nn.RNNCell``,
``nn.LSTMCell``, ``nn.GRUCell``: input and hidden weights) do not call a
sub-layer we could wrap.  Their forward therefore runs through
``torch.func.functional_call`` with ``W + s·B@A`` substituted for each adapted
weight: exact, differentiable, and the base module's own code is reused as is.
Dropout on the input has no meaning here and is not applied (PEFT's MultiheadAttention, which
merges its factors around the call, applies none either).

For ``nn.MultiheadAttention`` this is PEFT's ``lora.MultiheadAttention``: one factor pair for the
packed in-projection (``B`` is 3E x r) and one for ``out_proj``, both of the adapter's rank and
alpha, and only the packed (same q/k/v width) form.  The factors are kept here under the weight
they adapt (``lora_A[adapter]["in_proj_weight"]``, ``["out_proj_weight"]``); the adapter file
puts them where PEFT keeps them (:mod:`lora_studio.core.disk.peft_lora_format`).  The update is
``W + s·B·A`` for each weight, in the forward and in merge alike; PEFT up to 0.21.2 adds the
out-projection's update twice in both (fixed by its PR #3774).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call

from .base import AdapterLayer, WeightSlot

RNN_CELL_TYPES = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def param_key(weight_name: str) -> str:
    # ParameterDict keys cannot contain dots ("out_proj.weight" -> "out_proj_weight").
    return weight_name.replace(".", "_")


class WeightSpaceLora(AdapterLayer):
    """Adapts the weights named by :meth:`adapted_weight_names` of the base layer."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @staticmethod
    def adapted_weight_names(base_layer: nn.Module) -> tuple[str, ...]:
        if isinstance(base_layer, nn.MultiheadAttention):
            return ("in_proj_weight", "out_proj.weight")
        return ("weight_ih", "weight_hh")

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        shapes = [base_layer.get_parameter(n).shape for n in cls.adapted_weight_names(base_layer)]
        return sum(r * (rows + cols) for rows, cols in shapes)

    def weight_slots(self) -> dict[str, WeightSlot]:
        return {n: WeightSlot(self.base_layer.get_parameter(n)) for n in self.adapted_weight_names(self.base_layer)}

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter][param_key(key)], self.lora_B[adapter][param_key(key)]

    def create_factors(self, adapter: str, r: int) -> None:
        kw = {"device": self.factor_device(), "dtype": self.factor_dtype()}
        a, b = nn.ParameterDict(), nn.ParameterDict()
        for key, slot in self.weight_slots().items():
            rows, cols = slot.param.shape
            a[param_key(key)] = nn.Parameter(torch.empty(r, cols, **kw))
            b[param_key(key)] = nn.Parameter(torch.empty(rows, r, **kw))
        self.lora_A[adapter] = a
        self.lora_B[adapter] = b

    def add_adapter(self, adapter: str, *, dropout: float, **kwargs) -> None:
        if dropout > 0:
            warnings.warn(
                f"{type(self.base_layer).__name__} is adapted in weight space; dropout={dropout} is not applied to it",
                stacklevel=2,
            )
        super().add_adapter(adapter, dropout=0.0, **kwargs)

    def forward(self, *args, **kwargs):
        self._run_base_disabled()
        adapter = self.adapter_in_use()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        behaviour = self.behaviours[adapter]
        overrides = {
            key: behaviour.effective_weight(self, adapter, key, slot.param) for key, slot in self.weight_slots().items()
        }
        return functional_call(self.base_layer, overrides, args, kwargs, strict=False)


def mha_reason(module: nn.MultiheadAttention) -> str | None:
    """Why this attention module cannot be wrapped, or None when it can."""
    if not module._qkv_same_embed_dim or module.in_proj_weight is None:
        return (
            "MultiheadAttention with separate kdim/vdim keeps q, k and v projections apart; "
            "only the packed in-projection form is supported"
        )
    return None
