"""A linear layer whose frozen weight is stored in NF4 and dequantised on the fly (QLoRA, arXiv:2305.14314).

``NF4Linear`` takes the place of a frozen ``nn.Linear`` (or transformers' GPT-2 ``Conv1D``,
stored the other way round) under a LoRA wrapper::

    x ──► NF4Linear: W' = dequantise(packed, absmax)  ──► x·W'ᵀ + b ──┐
    │                (4-bit storage, compute dtype)                  ▼
    └─► A ─► B ─► ×s  (full precision adapters) ──────────────────► (+) ─► y

Section 3 of the paper: "QLoRA has one storage data type (usually 4-bit NormalFloat) and a
computation data type"; the weight is dequantised for each matrix product, in forward and
again in backward (:class:`_DequantisingMatmul`), so no float copy of it outlives a call.

It subclasses ``nn.Linear`` as bitsandbytes' ``Linear4bit`` does, so the studio's layer rules
(target matching, ``all-linear``, re-wrapping after an adapter is deleted) treat it as the
linear layer it stands for.  It never allocates a float weight: ``weight`` is a read-only,
dequantised view computed on access.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .linear import is_transformers_conv1d
from .nf4_format import NF4Layout, bitsandbytes_applies, dequantize_nf4, quantize_nf4, stored_bytes

SourceKind = Literal["linear", "conv1d"]


class _DequantisingMatmul(torch.autograd.Function):
    """``x · W'ᵀ`` that keeps only the 4-bit weight for backward and dequantises it again there."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        # The base weight is frozen: only the input gets a gradient (for adapters in earlier layers).
        return grad_out @ ctx.layer.dequantized_weight(grad_out.dtype), None


class NF4Linear(nn.Linear):
    """A frozen linear layer stored in 4 bits (``weight_packed`` + absmax buffers, bitsandbytes' layout), bias
    kept as is.  NF4 when the studio quantised it; a ``*-bnb-4bit`` checkpoint may bring FP4."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tensors: dict[str, torch.Tensor],
        layout: NF4Layout,
        *,
        bias: nn.Parameter | None,
        compute_dtype: torch.dtype,
        source_dtype: torch.dtype,
        source_kind: SourceKind = "linear",
        use_bitsandbytes: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate the float weight we replace
        self.in_features, self.out_features = in_features, out_features
        self.layout = layout
        self.compute_dtype = compute_dtype
        self.source_dtype = source_dtype  # the weight's dtype before quantisation (memory report, merge)
        self.source_kind: SourceKind = source_kind  # what merging gives back: nn.Linear or Conv1D
        self.use_bitsandbytes = use_bitsandbytes
        for key, tensor in tensors.items():
            self.register_buffer(f"weight_{key}", tensor)
        self.register_parameter("bias", bias)

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        *,
        block_size: int = 64,
        double_quant: bool = True,
        double_quant_block_size: int = 256,
        compute_dtype: torch.dtype | None = None,
        use_bitsandbytes: bool = True,
    ) -> NF4Linear:
        """Quantise a float ``nn.Linear`` or GPT-2 ``Conv1D``; its bias Parameter is reused as is."""
        kind: SourceKind = "conv1d" if is_transformers_conv1d(module) else "linear"
        weight = module.weight.detach()
        matrix = weight.t() if kind == "conv1d" else weight  # stored as (out, in) either way
        return cls.from_weight(
            matrix, module.bias, block_size=block_size, double_quant=double_quant,
            double_quant_block_size=double_quant_block_size, compute_dtype=compute_dtype or weight.dtype,
            source_dtype=weight.dtype, source_kind=kind, use_bitsandbytes=use_bitsandbytes,
        )  # fmt: skip

    @classmethod
    def from_weight(
        cls,
        matrix: torch.Tensor,
        bias: nn.Parameter | None,
        *,
        block_size: int,
        double_quant: bool,
        double_quant_block_size: int,
        compute_dtype: torch.dtype,
        source_dtype: torch.dtype,
        source_kind: SourceKind,
        use_bitsandbytes: bool = True,
        quant_type: str = "nf4",
    ) -> NF4Linear:
        """Quantise an ``(out, in)`` weight matrix (NF4, or FP4 for a base that came in FP4)."""
        layout = NF4Layout(tuple(matrix.shape), block_size, double_quant, double_quant_block_size, quant_type)
        out_features, in_features = matrix.shape
        return cls(
            in_features, out_features, quantize_nf4(matrix, layout), layout, bias=bias,
            compute_dtype=compute_dtype, source_dtype=source_dtype, source_kind=source_kind,
            use_bitsandbytes=use_bitsandbytes,
        )  # fmt: skip

    # -- the weight ---------------------------------------------------------------------------
    def quantised_tensors(self) -> dict[str, torch.Tensor]:
        """The stored 4-bit tensors, by the keys :func:`~.nf4_format.quantize_nf4` returns."""
        return {name.removeprefix("weight_"): buf for name, buf in self.named_buffers(recurse=False)}

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The ``(out, in)`` weight in ``dtype`` (default: the compute dtype), freshly dequantised."""
        return dequantize_nf4(
            self.quantised_tensors(), self.layout, dtype or self.compute_dtype, use_bnb=self.use_bitsandbytes
        )

    @property
    def uses_bitsandbytes(self) -> bool:
        """True when forward dequantises in bitsandbytes' CUDA kernel rather than in plain PyTorch."""
        return self.use_bitsandbytes and bitsandbytes_applies(self.weight_packed, self.layout, self.compute_dtype)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantised weight, for code that reads ``.weight`` (shape, dtype, values).

        Made an inference tensor on purpose: writing into it in place (as a float merge would)
        raises instead of changing a temporary copy while the 4-bit weight stays as it was.
        """
        with torch.inference_mode():
            return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DequantisingMatmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype) if x.is_floating_point() else out

    # -- memory and conversion -------------------------------------------------------------------
    def quantised_bytes(self) -> int:
        """Bytes of the 4-bit weight and its scales (the bias is not counted: it is not quantised)."""
        return stored_bytes(self.quantised_tensors())

    def float_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes the same weight takes in ``dtype``."""
        return self.in_features * self.out_features * torch.empty((), dtype=dtype).element_size()

    def to_float_module(self, matrix: torch.Tensor, dtype: torch.dtype) -> nn.Module:
        """A float module of the source kind holding the ``(out, in)`` weight ``matrix`` in ``dtype``.

        The bias Parameter is shared, not copied, so an optimizer that trains it keeps its reference.
        """
        weight = matrix.detach().to(dtype)
        if self.source_kind == "conv1d":
            from transformers.pytorch_utils import Conv1D  # only reached for a model that came with one

            module = Conv1D(self.out_features, self.in_features)
            module.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
        else:
            module = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
            module.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        module.bias = self.bias
        return module

    def extra_repr(self) -> str:
        lay = self.layout
        dq = f", double_quant={lay.double_quant_block_size}" if lay.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{lay.quant_type} block_size={lay.block_size}{dq}, compute_dtype={self.compute_dtype}"
        )


__all__ = ["NF4Linear"]
