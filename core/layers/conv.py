"""LoRA for ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``, ungrouped, grouped and depthwise.

A is a convolution with the base layer's kernel, stride, padding and dilation
into r channels; B is a 1×1 convolution back to the output channels.  PEFT uses
the same two modules (and the same tensor keys).

**Ungrouped** (``groups == 1``): the composition is exactly one convolution with
weight ``B @ A`` (reshaped), so merging is exact.

**Grouped and depthwise** (``groups = g > 1``), as PEFT 0.21 builds them
(``peft/tuners/lora/layer.py`` ``_ConvNd``): A stays an *ungrouped* convolution
``in → r`` (it reads every input channel) and B is a grouped 1×1 convolution
``r → out`` with ``groups = g``, so r must be divisible by g.  Output channel ``o``
of group ``j`` reads only the rank channels of block ``j``::

    ΔW[o] = s · Σ_{t < r/g} B[o, t] · A[j·r/g + t]          (an (in, *kernel) slice: every input channel)

That update reads every input channel, while the grouped base weight
``(out, in/g, *kernel)`` holds, for each output channel, only the channels of its
own group: **no grouped weight can hold it, so LoRA and DoRA on a grouped conv
cannot be merged.**  PEFT refuses the same merge; here it is refused by name
(:class:`MergeNotSupportedError`) before any weight changes, with the way out:
keep the adapter unmerged (its forward is exact) or export the adapter rather
than a merged model.  :meth:`ConvLora.delta_weight` still returns the update, as
the ungrouped ``(out, in, *kernel)`` weight above, so the update's size can be
reported.  LoHa and LoKr build a ΔW of the grouped weight's own shape (PEFT's
``in_channels // groups``), so they merge and unmerge exactly on grouped convs too.

Which variants adapt a grouped conv: LoRA (and LoRA+, whose maths is LoRA's),
DoRA, LoHa and LoKr, PEFT's set; a behaviour declares it with
``adapts_grouped_convs = True``.  Others are refused by name when they attach.

**Dilation.** PEFT builds A without the base conv's ``dilation`` (and ``padding_mode``);
with a dilated kernel its A then yields another spatial size or another update.
Here A uses the base conv's dilation and padding mode, which is the update the
layer's own convolution would see; saving such an adapter in PEFT's format warns
that PEFT computes another update (``core/disk/peft_lora_format.py``).

The fused function of :mod:`.fused_lora` has no groups: a grouped conv runs op by op.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import AdapterLayer, WeightSlot
from .behaviour import AdapterBehaviour, MergeNotSupportedError
from .fused_lora import ConvProjections, fused_lora, keeps_less_than_op_by_op

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ConvLora(AdapterLayer):
    """``y = base(x) + s · B(A(dropout(x)))`` for an N-d convolution (B grouped like the base)."""

    fast_paths = "fused"  # the fused function computes exactly project_down/project_up below; no folding

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    @classmethod
    def added_parameters(cls, base_layer: nn.Module, r: int) -> int:
        # A: (r, in, *kernel), ungrouped; B: (out, r/groups, 1, ...), grouped like the base.
        if r % base_layer.groups:
            raise ValueError(grouped_rank_reason(base_layer, r))  # what attaching would refuse, for previews
        return r * base_layer.in_channels * math.prod(base_layer.kernel_size) + base_layer.out_channels * (
            r // base_layer.groups
        )

    @property
    def grouped(self) -> bool:
        """True for a grouped or depthwise base convolution (``groups > 1``)."""
        return self.base_layer.groups != 1

    def weight_slots(self) -> dict[str, WeightSlot]:
        return {"weight": WeightSlot(self.base_layer.weight)}

    def stored_factors(self, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[adapter].weight, self.lora_B[adapter].weight

    def add_adapter(self, adapter: str, *, behaviour: AdapterBehaviour | None = None, **kwargs: Any) -> None:
        """As :meth:`AdapterLayer.add_adapter`; on a grouped conv only behaviours with a grouped form
        attach, and a LoRA/DoRA one is marked as not mergeable (see the module docstring)."""
        behaviour = behaviour or AdapterBehaviour()
        if self.grouped and not adapts_grouped_convs(behaviour):
            raise ValueError(grouped_conv_reason(self.base_layer))
        super().add_adapter(adapter, behaviour=behaviour, **kwargs)
        if self.grouped and adapter in self.lora_A:
            # This adapter's update is no grouped weight: the merge paths (merge, merged export) must refuse.
            behaviour.can_merge = False
            behaviour.cannot_merge_reason = grouped_merge_reason(self.base_layer, adapter)
            behaviour.merge_is_per_slot = False

    def create_factors(self, adapter: str, r: int) -> None:
        base = self.base_layer
        if r % base.groups:
            raise ValueError(grouped_rank_reason(base, r))
        conv = type(base)
        kw = {"bias": False, "device": self.factor_device(), "dtype": self.factor_dtype()}
        self.lora_A[adapter] = conv(
            base.in_channels, r, base.kernel_size, base.stride, base.padding,
            dilation=base.dilation, padding_mode=base.padding_mode, **kw,
        )  # fmt: skip
        self.lora_B[adapter] = conv(r, base.out_channels, 1, 1, groups=base.groups, **kw)

    # nn.ConvNd._conv_forward applies the module's stride, padding (and padding mode), dilation and
    # groups to any weight tensor, so masked or generated factors run exactly like the stored ones.
    def project_down(self, x: torch.Tensor, a: torch.Tensor, adapter: str) -> torch.Tensor:
        return self.lora_A[adapter]._conv_forward(x, a, None)

    def project_up(self, h: torch.Tensor, b: torch.Tensor, adapter: str) -> torch.Tensor:
        return self.lora_B[adapter]._conv_forward(h, b, None)

    def fused_forward(self, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor | None:
        # The fused function uses zero padding given as numbers on a batched input, with no groups; other
        # padding modes, padding="same"/"valid", unbatched inputs, grouped B and autocast keep the op-by-op path.
        conv = self.lora_A[adapter]
        if (self.fast_paths == "none" or self.grouped or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
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

    # -- grouped convolutions -------------------------------------------------------------------
    def delta_weight(self, adapter: str, key: str = "weight") -> torch.Tensor:
        """The update of ``key`` in float32.  Standard LoRA on a grouped conv: the ungrouped
        ``(out, in, *kernel)`` weight of ``s · B(A(·))`` (no grouped weight holds it)."""
        behaviour = self.behaviours[adapter]
        if self.grouped and adapter in self.lora_A and type(behaviour) is AdapterBehaviour:
            a, b = behaviour.factors(self, adapter, key)
            return self.ungrouped_lora_update(a, b) * self.scaling[adapter]
        return super().delta_weight(adapter, key)

    def ungrouped_lora_update(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``B(A(·))`` as one ungrouped convolution weight ``(out, in, *kernel)``, in float32, unscaled.

        B is a grouped 1×1 conv: output channel ``o`` of group ``j`` reads rank channels
        ``j·r/g .. (j+1)·r/g - 1``, so B is the block-diagonal ``(out, r)`` matrix built here."""
        r = a.shape[0]
        b2d = b.reshape(b.shape[0], -1).float()  # (out, r/g)
        blocks = b2d.reshape(self.base_layer.groups, -1, b2d.shape[1])  # (g, out/g, r/g)
        full_b = torch.block_diag(*blocks)  # (out, r)
        return (full_b @ a.reshape(r, -1).float()).reshape(
            self.base_layer.out_channels, self.base_layer.in_channels, *a.shape[2:]
        )

    def ungrouped_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A grouped weight ``(out, in/g, *kernel)`` as the ungrouped ``(out, in, *kernel)`` weight of the
        same convolution: zero outside each output channel's own group of input channels."""
        groups = self.base_layer.groups
        out, per_group = weight.shape[0], weight.shape[1]
        full = weight.new_zeros((out, per_group * groups, *weight.shape[2:]))
        rows = out // groups
        for j in range(groups):
            full[j * rows : (j + 1) * rows, j * per_group : (j + 1) * per_group] = weight[j * rows : (j + 1) * rows]
        return full

    def merge(self, adapter: str | None = None, untie: frozenset[str] = frozenset()) -> None:
        name = adapter or self.active_adapter
        if self.grouped and name in self.lora_A and name not in self.merged_adapters:
            raise MergeNotSupportedError(grouped_merge_reason(self.base_layer, name))
        super().merge(adapter, untie)


def adapts_grouped_convs(behaviour: AdapterBehaviour) -> bool:
    """True when ``behaviour`` has a form for grouped convolutions: standard LoRA, or a behaviour that
    declares ``adapts_grouped_convs = True`` (DoRA, LoHa, LoKr)."""
    return type(behaviour) is AdapterBehaviour or bool(getattr(behaviour, "adapts_grouped_convs", False))


def grouped_conv_reason(conv: nn.Module) -> str:
    """Why a variant without a grouped form cannot adapt this grouped conv, and what to do."""
    return (
        f"{type(conv).__name__} with groups={conv.groups} (grouped or depthwise): this variant has no form for "
        "grouped convolutions; LoRA Studio adapts them with the variants lora, lora_plus, dora, loha and lokr "
        "(as PEFT does); use one of those, or leave this layer out of targets"
    )


def grouped_rank_reason(conv: nn.Module, r: int) -> str:
    """PEFT's rule for LoRA on a grouped conv: the rank splits evenly over the groups."""
    fits = [k * conv.groups for k in range(1, 4)]
    return (
        f"rank {r} on a {type(conv).__name__} with groups={conv.groups}: LoRA's B is a grouped convolution, so "
        f"the rank must be divisible by {conv.groups} (as in PEFT); use a rank such as "
        f"{', '.join(map(str, fits))} for this layer (rank_pattern), or leave it out of targets"
    )


def grouped_merge_reason(conv: nn.Module, adapter: str) -> str:
    """Why LoRA/DoRA adapter ``adapter`` cannot merge into a grouped conv, and what to do instead."""
    return (
        f"adapter {adapter!r} cannot be merged into a {type(conv).__name__} with groups={conv.groups}: its "
        "update reads every input channel (PEFT's layout: A is an ungrouped convolution), which no grouped "
        "weight can hold (PEFT refuses this merge too). Keep the adapter unmerged (its outputs are exact), "
        "or export the adapter instead of a merged model; LoHa and LoKr merge exactly on grouped convs"
    )
