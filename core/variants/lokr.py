"""LoKr: a Kronecker product update (LyCORIS, Yeh et al. 2024, section 3.2).

Both sizes of the weight are split into two factors, out = a·b and in = c·d, and the
update is the Kronecker product of a small (a, c) matrix and a larger (b, d) one::

    ΔW = s · W1 ⊗ W2        W1: (a, c)   W2: (b, d)   s = alpha / r
    ΔW[i·b + j, k·d + l] = s · W1[i, k] · W2[j, l]

The rank of ΔW is rank(W1)·rank(W2), so a few hundred parameters can reach a full-rank
update.  W2 is itself low-rank, W2a @ W2b, when r < max(b, d)/2, and W1 likewise when
``decompose_both`` is set and r < max(a, c)/2 (PEFT's rule, so shapes agree with its files).
W1 (or W1a) starts at zero, so the adapter starts as the identity.

Convolutions split the channels (the input channels per group, ``in_channels // groups``,
as PEFT does, so a grouped conv's ΔW has its grouped weight's shape) and keep the kernel
whole in W2: (b, d, *kernel) for Conv1d/Conv2d, as PEFT stores it.  For Conv1d PEFT applies
``torch.kron`` to a 2-D W1 and a 3-D W2, which reads W1 as (1, a, c); we compute exactly that,
so a PEFT file means the same update here.  Conv3d (which PEFT lacks) keeps W2 flat,
(b, d·k³), a plain matrix Kronecker.  With ``use_effective_conv2d`` a low-rank W2 of a
Conv1d/Conv2d is CP-decomposed as PEFT does it: ``W2 = rebuild(T2, W2a, W2b)`` with a core
T2 ``(r, r, kh, kw)`` (Conv1d ``(r, r, k, 1)``) and factors ``(r, b)``, ``(r, d)``.

The split of each size is PEFT's :func:`factorization`, fallback included: a
``decompose_factor`` that does not divide a size gives PEFT's other split of it, so every
file PEFT writes has the shapes computed here.  ``rank_dropout``, ``module_dropout`` and
``rank_dropout_scale`` are PEFT's (see :mod:`.lycoris`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora
from .lycoris import (
    LycorisSettings,
    ProductUpdateBehaviour,
    cp_core_shape,
    cp_rebuild,
    kaiming_,
    supported_layers_text,
    uses_cp,
    weight_dims,
)
from .registry import Variant, register_variant


@dataclass
class LokrSettings(LycorisSettings):
    """LoKr's own settings (PEFT's ``LoKrConfig`` fields of the same names)."""

    decompose_factor: int = field(
        default=-1,
        metadata={
            "help": "Size of the small Kronecker factor along each dimension. -1: balanced factors (near the "
            "square root). A factor that does not divide a layer's size gets PEFT's fallback split of it."
        },
    )
    decompose_both: bool = field(
        default=False,
        metadata={"help": "Also make the small factor W1 low-rank (W1a·W1b) when r is below half its size."},
    )
    rank_dropout_scale: bool = field(
        default=False,
        metadata={"help": "Training only: rescale the rows rank_dropout keeps by 1/(fraction kept) (PEFT's option)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        f = self.decompose_factor
        if isinstance(f, bool) or not isinstance(f, int) or (f != -1 and f < 1):
            raise ValueError(f"decompose_factor must be -1 (automatic) or an integer >= 1, got {f!r}")
        if not isinstance(self.decompose_both, bool):
            raise ValueError(f"decompose_both must be true or false, got {self.decompose_both!r}")
        if not isinstance(self.rank_dropout_scale, bool):
            raise ValueError(f"rank_dropout_scale must be true or false, got {self.rank_dropout_scale!r}")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m·n = dimension``: PEFT's rule
    (``peft/tuners/lokr/layer.py`` ``factorization``, line for line).

    ``m = factor`` when it divides ``dimension``; otherwise (and for ``-1``, which searches up to
    the square root) the divisor pairs are walked upwards from ``(1, dimension)`` while ``m < n``
    and ``m`` stays within ``factor``, and the last pair is returned smaller first.  E.g.
    ``factorization(10, 4) == (2, 5)``, ``factorization(12) == (3, 4)``, ``factorization(127) == (1, 127)``.
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


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
    cp: bool = False  # a low-rank W2 CP-decomposed: core (r, r, kh, kw), factors (r, b), (r, d)


def kronecker_shape(layer: AdapterLayer, key: str, r: int, settings: LokrSettings) -> KroneckerShape:
    """PEFT's shapes for weight ``key`` at rank ``r`` (``LoKrLayer.update_layer``)."""
    out_dim, in_dim, kernel = weight_dims(layer, layer.weight_slots()[key])
    a, b = factorization(out_dim, settings.decompose_factor)
    c, d = factorization(in_dim, settings.decompose_factor)
    full_w1 = not (settings.decompose_both and r < max(a, c) / 2)
    full_w2 = not r < max(b, d) / 2
    kernel_axes = isinstance(layer, ConvLora) and isinstance(layer.base_layer, (nn.Conv1d, nn.Conv2d))
    cp = not full_w2 and uses_cp(layer, settings)
    return KroneckerShape(a, b, c, d, kernel, full_w1, full_w2, kernel_axes, cp)


class KroneckerBehaviour(ProductUpdateBehaviour):
    """One LoKr adapter on one layer: W1 (or W1a, W1b) and W2 (or W2a, W2b) per adapted weight."""

    variant_title = "LoKr"

    def __init__(self, settings: LokrSettings) -> None:
        super().__init__(settings)
        self.rescales_rank_dropout = settings.rank_dropout_scale  # LoKr rescales only when asked (PEFT)

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
            elif s.cp:
                self.new_factor(layer, "lokr_t2", adapter, key, cp_core_shape(layer, r))
                self.new_factor(layer, "lokr_w2_a", adapter, key, (r, s.b))
                self.new_factor(layer, "lokr_w2_b", adapter, key, (r, s.d))
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
        for name in ("lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            param = self.factor(layer, name, adapter, key)
            if param is not None:
                kaiming_(param)

    def _side(self, layer: AdapterLayer, adapter: str, key: str, side: str, dtype: torch.dtype) -> torch.Tensor:
        full = self.factor(layer, f"lokr_w{side}", adapter, key)
        if full is not None:
            return full.to(dtype)
        core = self.factor(layer, f"lokr_t{side}", adapter, key)
        if core is not None:  # CP: (b, d, kh, kw), Conv1d (b, d, k, 1)
            wa, wb = (self.factor(layer, f"lokr_w{side}_{p}", adapter, key).to(dtype) for p in "ab")
            # A fresh row-major copy: einsum may give a trailing unit axis an odd stride, which torch.kron's
            # internal view rejects (PEFT 0.21 fails so on a Conv1d at r=1; the values are the same).
            return cp_rebuild(core.to(dtype), wa, wb).clone(memory_format=torch.contiguous_format)
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
        return KroneckerBehaviour(settings or LokrSettings())


register_variant(Lokr())
