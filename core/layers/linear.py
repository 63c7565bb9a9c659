"""LoRA for ``nn.Linear`` and transformers' GPT-2-style ``Conv1D`` (a linear layer stored (in, out))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, WeightSlot
from .fused_lora import LinearProjections, folded_lora, fused_lora

_PROJECTIONS = LinearProjections()


def is_transformers_conv1d(module: nn.Module) -> bool:
    """True for ``transformers.pytorch_utils.Conv1D`` (checked by name: no transformers import needed)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


class LinearLora(AdapterLayer):
    """``y = base(x) + s · B(A(dropout(x)))`` with A: in→r and B: r→out as ``nn.Linear`` (PEFT's layout)."""

    fast_paths = "folded"  # both fast paths compute exactly project_down/project_up below

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

    def weight_slots(self) -> dict[str, WeightSlot]:
        return {"weight": WeightSlot(self.base_layer.weight, transposed=self.fan_in_fan_out)}

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter].weight, self.lora_B[adapter].weight

    def create_factors(self, adapter: str, r: int) -> None:
        kw = {"bias": False, "device": self.factor_device(), "dtype": self.factor_dtype()}
        self.lora_A[adapter] = nn.Linear(self.in_features, r, **kw)
        self.lora_B[adapter] = nn.Linear(r, self.out_features, **kw)

    def project_down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        return F.linear(x, a)

    def project_up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        return F.linear(h, b)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The base output plus the active adapter's contribution; where exact enough (see
        :meth:`_folded_forward`) as one product with the update folded into the weight."""
        folded = None if (args or kwargs) else self._folded_forward(x)
        return folded if folded is not None else super().forward(x, *args, **kwargs)

    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x (W + s·B A)ᵀ + bias`` through :func:`.fused_lora.folded_lora`, or None where that does not apply.

        It skips the base layer's own call, so it applies only where that call is exactly
        ``F.linear``/``addmm`` (``nn.Linear``, GPT-2's ``Conv1D``, no hooks), the base is frozen,
        everything is float32 (the folded weight rounds once more: float32 keeps that to 1e-6
        relative), no autocast, no dropout at work, and gradients are being recorded.  Where the
        fused function is switched off on this layer (the op-by-op oracle of the tests and the
        benchmark's ``unfused`` arm), so is this.
        """
        adapter = self.adapter_in_use()
        if adapter is None or self.fast_paths != "folded" or self.behaviours[adapter].forward_path != "standard":
            return None
        base = self.base_layer
        if not (type(base) is nn.Linear or is_transformers_conv1d(base)) or _hooked(base):
            return None
        dropout = self.lora_dropout[adapter]
        if not (isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout)
                                                     and (dropout.p == 0 or not dropout.training))):  # fmt: skip
            return None
        weight, bias = base.weight, base.bias
        a, b = self.stored_factors(adapter, "weight")
        frozen = [weight] + ([bias] if bias is not None else [])
        if any(t.requires_grad for t in frozen) or any(t.dtype != torch.float32 for t in (x, a, b, *frozen)):
            return None
        if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            return None
        if not _folding_pays(x.numel() // max(x.shape[-1], 1), self.in_features, self.out_features):
            return None
        return folded_lora(x, weight, bias, a, b, self.scaling[adapter], self.fan_in_fan_out)

    def fused_forward(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor | None:
        # Autocast (which recasts F.linear's inputs inside the function) keeps the op-by-op path.
        if self.fast_paths == "none" or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type):
            return None
        dropout = self.lora_dropout[adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        a, b = self.stored_factors(adapter, "weight")
        return fused_lora(x, result, a, b, self.scaling[adapter], p, _PROJECTIONS)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.t() if self.fan_in_fan_out else weight)


def _folding_pays(tokens: int, fan_in: int, fan_out: int) -> bool:
    """True when folding costs less than it saves.  Folding builds ``W + s·B A`` twice a step (forward,
    and again in backward): about ``2·in·out·(2r+1)`` operations and two passes over the weight, for
    any batch.  It saves, per token, the products ``h Bᵀ`` and ``g_h A`` and the output- and input-sized
    adds: about ``(2r+1)·(in+out)``.  So it pays from ``2·in·out/(in+out)`` tokens on -- 512 for a
    512-wide layer, 1,024 for a 1024-wide one; below that (a small batch through a wide layer) the
    op-by-op path is faster: a batch of 64 through 1024-wide layers was 20 % slower folded
    (``bench/bench_trainer_overhead.py``)."""
    return tokens * (fan_in + fan_out) >= 2 * fan_in * fan_out


def _hooked(module: nn.Module) -> bool:
    """True when calling ``module`` would run hooks (its own or global ones) besides its forward."""
    from torch.nn.modules import module as m

    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    every = (m._global_forward_hooks, m._global_forward_pre_hooks, m._global_backward_hooks,
             m._global_backward_pre_hooks)  # fmt: skip
    return any(len(hooks) for hooks in own + every)
