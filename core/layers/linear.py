"""LoRA for ``nn.Linear`` and transformers' GPT-2-style ``Conv1D`` (a linear layer stored (in, out))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, WeightSlot
from .fused_lora import LinearProjections, fused_lora

_PROJECTIONS = LinearProjections()


def is_transformers_conv1d(module: nn.Module) -> bool:
    """True for ``transformers.pytorch_utils.Conv1D`` (checked by name: no transformers import needed)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


class LinearLora(AdapterLayer):
    """``y = base(x) + s · B(A(dropout(x)))`` with A: in→r and B: r→out as ``nn.Linear`` (PEFT's layout)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = is_transformers_conv1d(base_layer)
        weight = base_layer.weight
        self.in_features, self.out_features = (
            (weight.shape[0], weight.shape[1]) if self.fan_in_fan_out else (weight.shape[1], weight.shape[0])
        )
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        out_f, in_f = base_layer.weight.shape
        return r * (in_f + out_f)

    def _weight_slots(self) -> dict[str, WeightSlot]:
        return {"weight": WeightSlot(self.base_layer.weight, transposed=self.fan_in_fan_out)}

    def _factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter].weight, self.lora_B[adapter].weight

    def _create_factors(self, adapter: str, r: int) -> None:
        kw = {"bias": False, "device": self._factor_device(), "dtype": self._factor_dtype()}
        self.lora_A[adapter] = nn.Linear(self.in_features, r, **kw)
        self.lora_B[adapter] = nn.Linear(r, self.out_features, **kw)

    def _down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        return F.linear(x, a)

    def _up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        return F.linear(h, b)

    def _fused_forward(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor | None:
        # Subclasses that change the projections, and autocast (which recasts F.linear's inputs
        # inside the function), keep the op-by-op path.
        if (type(self)._down is not LinearLora._down or type(self)._up is not LinearLora._up
                or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type)):  # fmt: skip
            return None
        dropout = self.lora_dropout[adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        a, b = self._factors(adapter, "weight")
        return fused_lora(x, result, a, b, self.scaling[adapter], p, _PROJECTIONS)

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.t() if self.fan_in_fan_out else weight)
