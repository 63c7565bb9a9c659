"""LoKr: a Kronecker product update (LyCORIS, Yeh et al. 2024, section 3.2).

Both sizes of the weight are split into two factors, out = a·b and in = c·d, and the
update is the Kronecker product of a small (a, c) matrix and a larger (b, d) one::

    ΔW = s · W1 ⊗ W2        W1: (a, c)   W2: (b, d)   s = alpha / r
    ΔW[i·b + j, k·d + l] = s · W1[i, k] · W2[j, l]

The rank of ΔW is rank(W1)·rank(W2), so a few hundred parameters can reach a full-rank
update.  W2 is itself low-rank, W2a @ W2b, when r < max(b, d)/2, and W1 likewise when
``decompose_both`` is set and r < max(a, c)/2 (PEFT's rule, so shapes agree with its files).
W1 (or W1a) starts at zero, so the adapter starts as the identity.

Convolutions split the channels and keep the kernel whole in W2: (b, d, *kernel) for
Conv1d/Conv2d, as PEFT stores it.  For Conv1d PEFT applies ``torch.kron`` to a 2-D W1 and a
3-D W2, which reads W1 as (1, a, c); we compute exactly that, so a PEFT file means the same
update here.  Conv3d (which PEFT lacks) keeps W2 flat, (b, d·k³), a plain matrix Kronecker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora
from .lycoris import ProductUpdateBehaviour, kaiming_, supported_layers_text, weight_dims
from .registry import Variant, register_variant


@dataclass
class LokrSettings:
    """LoKr's own settings (PEFT's ``LoKrConfig`` fields of the same names)."""

    decompose_factor: int = field(
        default=-1,
        metadata={
            "help": "Size of the small Kronecker factor along each dimension; it must divide every adapted "
            "layer's input and output size. -1: the divisor nearest the square root (balanced factors)."
        },
    )
    decompose_both: bool = field(
        default=False,
        metadata={"help": "Also make the small factor W1 low-rank (W1a·W1b) when r is below half its size."},
    )

    def __post_init__(self) -> None:
        f = self.decompose_factor
        if isinstance(f, bool) or not isinstance(f, int) or (f != -1 and f < 1):
            raise ValueError(f"decompose_factor must be -1 (automatic) or an integer >= 1, got {f!r}")
        if not isinstance(self.decompose_both, bool):
            raise ValueError(f"decompose_both must be true or false, got {self.decompose_both!r}")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m·n = dimension``: ``m = factor`` when given, else the
    largest divisor not above the square root (LyCORIS's and PEFT's rule).

    Unlike PEFT, which silently picks another split when ``factor`` does not divide ``dimension``,
    this refuses it: the user asked for a factor size the layer cannot have.
    """
    if factor == -1:
        m = max(d for d in range(1, math.isqrt(dimension) + 1) if dimension % d == 0)
        return m, dimension // m
    if dimension % factor:
        divisors = [d for d in range(1, dimension + 1) if dimension % d == 0]
        raise ValueError(
            f"decompose_factor={factor} does not divide {dimension}; factors that do: "
            f"{', '.join(map(str, divisors))}, or -1 for automatic"
        )
    return factor, dimension // factor


@dataclass(frozen=True)
class KroneckerShape:
    """The factor shapes of one adapted weight: out = a·b, in = c·d, kernel kept in W2."""

    a: int
    b: int
    c: int
    d: int
    kernel: tuple[int, ...]
    full_w1: bool
    full_w2: bool
    kernel_axes: bool  # W2 stored as (b, d, *kernel) (PEFT's Conv1d/Conv2d) rather than (b, d·k)


def kronecker_shape(layer: AdapterLayer, key: str, r: int, settings: LokrSettings) -> KroneckerShape:
    """PEFT's shapes for weight ``key`` at rank ``r`` (``LoKrLayer.update_layer``)."""
    out_dim, in_dim, kernel = weight_dims(layer, layer.weight_slots()[key])
    a, b = factorization(out_dim, settings.decompose_factor)
    c, d = factorization(in_dim, settings.decompose_factor)
    full_w1 = not (settings.decompose_both and r < max(a, c) / 2)
    full_w2 = not r < max(b, d) / 2
    kernel_axes = isinstance(layer, ConvLora) and isinstance(layer.base_layer, (nn.Conv1d, nn.Conv2d))
    return KroneckerShape(a, b, c, d, kernel, full_w1, full_w2, kernel_axes)


class KroneckerBehaviour(ProductUpdateBehaviour):
    """One LoKr adapter on one layer: W1 (or W1a, W1b) and W2 (or W2a, W2b) per adapted weight."""

    variant_title = "LoKr"

    def __init__(self, settings: LokrSettings) -> None:
        self.settings = settings

    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        for key in layer.weight_slots():
            s = kronecker_shape(layer, key, r, self.settings)
            if s.full_w1:
                self.new_factor(layer, "lokr_w1", adapter, key, (s.a, s.c))
            else:
                self.new_factor(layer, "lokr_w1_a", adapter, key, (s.a, r))
                self.new_factor(layer, "lokr_w1_b", adapter, key, (r, s.c))
            if s.full_w2:
                shape = (s.b, s.d, *s.kernel) if s.kernel_axes else (s.b, s.d * math.prod(s.kernel))
                self.new_factor(layer, "lokr_w2", adapter, key, shape)
            else:
                self.new_factor(layer, "lokr_w2_a", adapter, key, (s.b, r))
                self.new_factor(layer, "lokr_w2_b", adapter, key, (r, s.d * math.prod(s.kernel)))

    def init_factors(self, layer: AdapterLayer, adapter: str, key: str) -> None:
        # PEFT's init_weights=True: W1 (or W1a) zero, everything else Kaiming-uniform.
        w1 = self.factor(layer, "lokr_w1", adapter, key)
        if w1 is not None:
            nn.init.zeros_(w1)
        else:
            nn.init.zeros_(self.factor(layer, "lokr_w1_a", adapter, key))
            kaiming_(self.factor(layer, "lokr_w1_b", adapter, key))
        for name in ("lokr_w2", "lokr_w2_a", "lokr_w2_b"):
            param = self.factor(layer, name, adapter, key)
            if param is not None:
                kaiming_(param)

    def _side(self, layer: AdapterLayer, adapter: str, key: str, side: str, dtype: torch.dtype) -> torch.Tensor:
        full = self.factor(layer, f"lokr_w{side}", adapter, key)
        if full is not None:
            return full.to(dtype)
        return self.factor(layer, f"lokr_w{side}_a", adapter, key).to(dtype) @ self.factor(
            layer, f"lokr_w{side}_b", adapter, key
        ).to(dtype)

    def product(self, layer: AdapterLayer, adapter: str, key: str, dtype: torch.dtype) -> torch.Tensor:
        w1 = self._side(layer, adapter, key, "1", dtype)
        w2 = self._side(layer, adapter, key, "2", dtype)
        if w2.dim() == 4:  # a Conv2d kernel: W1 gets unit kernel axes, so each W1 entry scales a whole W2 block
            w1 = w1[:, :, None, None]
        # A 3-D W2 (Conv1d) meets a 2-D W1: torch.kron reads W1 as (1, a, c), exactly as PEFT computes it.
        return torch.kron(w1, w2)


class Lokr(Variant):
    name = "lokr"
    title = "LoKr"
    description = (
        "Low-rank Kronecker product (LyCORIS): each weight size is split into two factors and the update is "
        "(alpha/r)·W1⊗W2, a small matrix times a larger (optionally low-rank) one, so very few parameters "
        "can reach a full-rank update. W1 starts at zero, so training starts from the base model exactly, and "
        "the update merges into the weight at no extra cost. decompose_factor sets the small factor's size. "
        + supported_layers_text("LoKr")
        + "."
    )
    paper = (
        "Yeh et al., 'Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation', "
        "ICLR 2024 (arXiv:2309.14859), section 3.2; Edalati et al., 'KronA: Parameter Efficient Tuning with "
        "Kronecker Adapter', 2022 (arXiv:2212.10650)"
    )
    peft_type = "LOKR"
    settings_class = LokrSettings

    def behaviour(self, layer: AdapterLayer, settings: Any) -> AdapterBehaviour:
        settings = settings or LokrSettings()
        for key in layer.weight_slots():  # refuse a split the layer cannot have before anything is created
            out_dim, in_dim, _ = weight_dims(layer, layer.weight_slots()[key])
            for what, size in (("output", out_dim), ("input", in_dim)):
                try:
                    factorization(size, settings.decompose_factor)
                except ValueError as exc:
                    raise ValueError(f"variant_settings.{exc} ({dimension_note(layer, key, what)})") from None
        return KroneckerBehaviour(settings)


def dimension_note(layer: AdapterLayer, key: str, what: str) -> str:
    """Which size of which layer an error is about, e.g. 'the input size of a Linear layer's weight'."""
    return f"the {what} size of a {type(layer.base_layer).__name__} layer's {key}"


register_variant(Lokr())
