"""LoRA for ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d`` (ungrouped).

A is a convolution with the base layer's kernel, stride, padding and dilation
into r channels; B is a 1×1 convolution back to the output channels.  Their
composition is exactly one convolution with weight ``B @ A`` (reshaped), so
merging is exact.  PEFT uses the same two modules (and the same tensor keys).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdapterLayer, WeightSlot
from .fused_lora import ConvProjections, fused_lora, keeps_less_than_op_by_op

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ConvLora(AdapterLayer):
    """``y = base(x) + s · B(A(dropout(x)))`` for an N-d convolution."""

    fast_paths = "fused"  # the fused function computes exactly project_down/project_up below; no folding

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        if base_layer.groups != 1:
            raise TypeError(grouped_conv_reason(base_layer))
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        return r * (base_layer.in_channels * math.prod(base_layer.kernel_size) + base_layer.out_channels)

    def weight_slots(self) -> dict[str, WeightSlot]:
        return {"weight": WeightSlot(self.base_layer.weight)}

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter].weight, self.lora_B[adapter].weight

    def create_factors(self, adapter: str, r: int) -> None:
        base = self.base_layer
        conv = type(base)
        kw = {"bias": False, "device": self.factor_device(), "dtype": self.factor_dtype()}
        self.lora_A[adapter] = conv(
            base.in_channels, r, base.kernel_size, base.stride, base.padding,
            dilation=base.dilation, padding_mode=base.padding_mode, **kw,
        )  # fmt: skip
        self.lora_B[adapter] = conv(r, base.out_channels, 1, 1, **kw)

    # nn.ConvNd._conv_forward applies the module's stride, padding (and padding mode) and dilation
    # to any weight tensor, so masked or generated factors run exactly like the stored ones.
    def project_down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        return self.lora_A[adapter]._conv_forward(x, a, None)

    def project_up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        return self.lora_B[adapter]._conv_forward(h, b, None)

    def fused_forward(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor | None:
        # The fused function uses zero padding given as numbers on a batched input; other padding
        # modes, padding="same"/"valid", unbatched inputs and autocast keep the op-by-op path.
        conv = self.lora_A[adapter]
        if (self.fast_paths == "none" or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
                or x.dim() != conv.weight.dim() or torch.is_autocast_enabled(x.device.type)):  # fmt: skip
            return None
        dropout = self.lora_dropout[adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        a, b = self.stored_factors(adapter, "weight")
        if not keeps_less_than_op_by_op(x, a.dtype, p):
            return None
        projections = ConvProjections(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))
        return fused_lora(x, result, a, b, self.scaling[adapter], p, projections)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(x, weight.to(x.dtype), None)


def grouped_conv_reason(conv: nn.Module) -> str:
    return (
        f"{type(conv).__name__} with groups={conv.groups} (grouped or depthwise): LoRA Studio adapts "
        "only ungrouped convolutions; leave this layer out of targets"
    )
