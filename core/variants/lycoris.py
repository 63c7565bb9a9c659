"""Shared mechanics of the LyCORIS variants (LoHa, LoKr): the whole update ΔW built from small factors.

LoRA adds ``B(A x)``, two thin products applied to the input.  LoHa (a Hadamard
product of two low-rank matrices) and LoKr (a Kronecker product) cannot be split
that way, so, as LyCORIS and PEFT do, they build the full weight-shaped update
from their factors and apply it the way the base layer applies its own weight::

    factors ──► ΔW = s · f(factors)            (the base weight's shape; s = alpha/r)

    x ──► base_layer ─────────────────────────┐
    └──► dropout ──► apply ΔW like the base ──(+)──► y
                     (F.linear / the base conv's stride, padding, dilation / F.embedding)

ΔW is an ordinary weight, so merging adds it to W and unmerging subtracts it:
exact up to float32 rounding.  Layers adapted in weight space (attention,
recurrent cells) use ``W + ΔW`` directly.  On a grouped or depthwise convolution
ΔW has the grouped weight's shape ``(out, in/groups, *kernel)`` and is applied with
the base's groups (PEFT's ``in_channels // groups``), so it merges exactly there too.

PEFT's training-time options (:class:`LycorisSettings`), computed as PEFT computes them:

* ``module_dropout = p``: in training, each forward of a layer draws ``u = torch.rand(1)``
  and adds the adapter only when ``u > p`` (the whole update is skipped for that batch);
* ``rank_dropout = p``: in training, ΔW's output rows are kept where
  ``torch.rand(out) > p`` and zeroed elsewhere; LoHa rescales the kept rows by
  ``1 / mean(mask)``, LoKr only with ``rank_dropout_scale`` (when every row is dropped,
  PEFT's rescaling divides by zero and the batch turns NaN; here it gets no update);
* ``use_effective_conv2d``: a Conv1d/Conv2d kernel (not 1×1) is CP-decomposed: a core
  ``(r, r, kh, kw)`` (``hada_t1``/``hada_t2``, ``lokr_t2``; Conv1d ``(r, r, k, 1)``) between
  two ``(r, size)`` factors, instead of a low-rank ``(out, in·k)`` matrix.

Both dropouts draw from torch's global CPU generator in PEFT's order, so the same seed
drops the same rows as PEFT; in eval mode neither changes anything.

Factor containers are ``nn.ParameterDict``s keyed by adapter name and named as
PEFT names them (``hada_w1_a``, ``lokr_w1``...), so a saved tensor's key is
PEFT's key.  Layers with several adapted weights (weight space) nest one more
``ParameterDict`` keyed by weight name, as their LoRA factors do.

References: Hyeon-Woo et al., "FedPara: Low-Rank Hadamard Product for
Communication-Efficient Federated Learning", ICLR 2022 (arXiv:2108.06098);
Yeh et al., "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to
Model Evaluation", ICLR 2024 (arXiv:2309.14859).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora, EmbeddingLora, WeightSlot, WeightSpaceLora
from ..layers.weight_space import param_key

#: How a fresh LyCORIS adapter is initialised; LoRA's Gaussian init has no LoHa/LoKr form.
INIT_NAME = "default"


@dataclass
class LycorisSettings:
    """The settings LoHa and LoKr share (PEFT's ``LoHaConfig``/``LoKrConfig`` fields of the same names)."""

    rank_dropout: float = field(
        default=0.0,
        metadata={"help": "Training only: the chance each output row of the update is dropped for a batch, "
                          "in [0, 1); LoHa rescales the kept rows (PEFT's rule)."},
    )  # fmt: skip
    module_dropout: float = field(
        default=0.0,
        metadata={"help": "Training only: the chance a layer's whole update is skipped for a batch, in [0, 1]."},
    )
    use_effective_conv2d: bool = field(
        default=False,
        metadata={"help": "CP-decompose Conv1d/Conv2d kernels (not 1x1): a small (r, r, kernel) core between "
                          "two rank-r factors instead of a rank-r matrix over in·kernel (PEFT's option)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_probability("rank_dropout", self.rank_dropout, closed=False)
        _check_probability("module_dropout", self.module_dropout, closed=True)
        if not isinstance(self.use_effective_conv2d, bool):
            raise ValueError(f"use_effective_conv2d must be true or false, got {self.use_effective_conv2d!r}")


def _check_probability(name: str, value: object, *, closed: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}")


class ProductUpdateBehaviour(AdapterBehaviour):
    """An adapter whose update is a whole weight-shaped ΔW computed from its factors.

    Subclasses give :meth:`create` (through :meth:`new_factor`), :meth:`init_factors` and
    :meth:`product` (the unscaled ΔW, in any shape holding the weight's elements in its
    row-major order).
    """
    forward_path = "own"  # the update is a product of its own factors, not B·A
    update_form = "own"
    adapts_grouped_convs = True  # ΔW has the grouped weight's shape (PEFT's in_channels // groups)

    variant_title: str = ""  # names the variant in errors
    #: Rank dropout rescales the kept rows by 1/mean(mask) (PEFT: always for LoHa, LoKr with rank_dropout_scale).
    rescales_rank_dropout: bool = True

    def __init__(self, settings: LycorisSettings | None = None) -> None:
        self.settings = settings or LycorisSettings()

    # -- subclass hooks ---------------------------------------------------------------------------
    def product(self, layer: AdapterLayer, adapter: str, key: str, dtype: torch.dtype) -> torch.Tensor:
        """The unscaled update of weight ``key``, computed in ``dtype``."""
        raise NotImplementedError

    def init_factors(self, layer: AdapterLayer, adapter: str, key: str) -> None:
        """Initialise weight ``key``'s factors so the product is exactly zero (the adapter starts as identity)."""
        raise NotImplementedError

    # -- parameters -------------------------------------------------------------------------------
    def new_factor(self, layer: AdapterLayer, attr: str, adapter: str, key: str, shape: tuple[int, ...]) -> None:
        """Create an empty factor ``attr`` of ``adapter`` for weight ``key``, registering its container."""
        if attr not in layer._modules:
            # A layer may already carry LoRA adapters (lora_A/lora_B); the product containers sit beside them,
            # and listing them in factor_attributes lets freezing, counting, deletion and saving find them.
            setattr(layer, attr, nn.ParameterDict())
            layer.factor_attributes.append(attr)
        container = getattr(layer, attr)
        param = nn.Parameter(torch.empty(shape, device=layer.factor_device(), dtype=layer.factor_dtype()))
        if isinstance(layer, WeightSpaceLora):
            if adapter not in container:
                container[adapter] = nn.ParameterDict()
            container[adapter][param_key(key)] = param
        else:
            container[adapter] = param

    def factor(self, layer: AdapterLayer, attr: str, adapter: str, key: str) -> nn.Parameter | None:
        """Factor ``attr`` of ``adapter`` for weight ``key``, or None when this layer does not use it."""
        container = layer._modules.get(attr)
        if container is None or adapter not in container:
            return None
        entry = container[adapter]
        if isinstance(entry, nn.ParameterDict):
            return entry[param_key(key)] if param_key(key) in entry else None
        return entry

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        if init != INIT_NAME:
            raise ValueError(
                f"init={init!r} is a LoRA initialisation; {self.variant_title} starts as LyCORIS and PEFT start it "
                "(Kaiming-uniform factors with one factor zero, so the update is exactly zero). Use init='default'"
            )
        for key in layer.weight_slots():
            self.init_factors(layer, adapter, key)

    # -- the update -------------------------------------------------------------------------------
    def delta(
        self, layer: AdapterLayer, adapter: str, key: str, dtype: torch.dtype, *, rank_dropout: bool = False
    ) -> torch.Tensor:
        """``s · product`` in weight ``key``'s own layout, computed in ``dtype``; ``rank_dropout``: with
        the setting's rank dropout applied to its output rows (training forward only)."""
        slot = layer.weight_slots()[key]
        matrix = self.product(layer, adapter, key, dtype).reshape(slot.matrix(slot.param).shape)
        if rank_dropout and self.settings.rank_dropout:
            matrix = matrix * self._rank_mask(matrix)
        delta = slot.layout(matrix) * layer.scaling[adapter]
        if isinstance(layer, EmbeddingLora) and layer.base_layer.padding_idx is not None:
            # The padding row is never trained in the base model; keep it unchanged in forward and merge alike
            # (LoRA keeps A's padding column at zero for the same reason).
            pad = torch.tensor([layer.base_layer.padding_idx], device=delta.device)
            delta = delta.index_fill(0, pad, 0.0)
        return delta

    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        return self.delta(layer, adapter, key, torch.float32)

    def _rank_mask(self, matrix: torch.Tensor) -> torch.Tensor:
        # PEFT's draw: one uniform number per output row from the global CPU generator, then moved.
        keep = (torch.rand(matrix.shape[0]) > self.settings.rank_dropout).to(matrix.dtype)
        kept = float(keep.mean())  # on the CPU, where it was drawn: no device sync
        if self.rescales_rank_dropout and kept > 0:
            # PEFT divides by the mean even when every row was dropped, which makes the batch NaN; here that
            # batch simply gets no update (the only case where the outputs differ from PEFT's).
            keep = keep / kept
        return keep.to(matrix.device)[:, None]

    def _module_kept(self, layer: AdapterLayer) -> bool:
        """False when module dropout skips the adapter for this training forward (PEFT draws every time)."""
        return not layer.training or bool(torch.rand(1) > self.settings.module_dropout)

    def forward(self, layer: AdapterLayer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        if not self._module_kept(layer):
            return result
        return result + self.update(layer, adapter, x).to(result.dtype)

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta(layer, adapter, "weight", layer.factor_dtype(), rank_dropout=layer.training)
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(delta.dtype))
        return layer.apply_weight(x, delta)

    def effective_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        if not self._module_kept(layer):
            return weight
        delta = self.delta(layer, adapter, key, layer.factor_dtype(), rank_dropout=layer.training)
        return weight + delta.to(weight.dtype)


def kaiming_(param: nn.Parameter) -> None:
    """Kaiming-uniform with a=sqrt(5), as ``nn.Linear``, LyCORIS and PEFT initialise the non-zero factors."""
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))


def weight_dims(layer: AdapterLayer, slot: WeightSlot) -> tuple[int, int, tuple[int, ...]]:
    """(output size, input size, kernel size) of an adapted weight; the kernel is ``()`` outside convolutions."""
    if isinstance(layer, ConvLora):
        base = layer.base_layer
        return base.out_channels, base.in_channels // base.groups, tuple(base.kernel_size)
    rows, cols = slot.matrix(slot.param).shape
    return rows, cols, ()


def uses_cp(layer: AdapterLayer, settings: LycorisSettings) -> bool:
    """True when ``use_effective_conv2d`` CP-decomposes this layer's kernel: a Conv1d or Conv2d whose
    kernel is not all ones (PEFT's rule; PEFT has no Conv3d form, so Conv3d keeps the flat matrix)."""
    base = layer.base_layer
    return (
        settings.use_effective_conv2d
        and isinstance(layer, ConvLora)
        and isinstance(base, (nn.Conv1d, nn.Conv2d))
        and any(k != 1 for k in base.kernel_size)
    )


def cp_core_shape(layer: AdapterLayer, r: int) -> tuple[int, int, int, int]:
    """PEFT's CP core shape ``(r, r, kh, kw)``; a Conv1d kernel ``k`` is stored as ``(r, r, k, 1)``."""
    kernel = tuple(layer.base_layer.kernel_size)
    return (r, r, *kernel) if len(kernel) == 2 else (r, r, kernel[0], 1)


def cp_rebuild(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """``(out, in, kh, kw)`` from a CP core ``(r, r, kh, kw)`` and factors ``(r, out)``, ``(r, in)``:
    PEFT's ``einsum("i j k l, i p, j r -> p r k l")``."""
    return torch.einsum("i j k l, i p, j r -> p r k l", core, out_factor, in_factor)


def supported_layers_text(title: str) -> str:
    """The layer types a LyCORIS variant adapts here, and which of them PEFT can load."""
    return (
        f"{title} adapts Linear, transformers Conv1D, Conv1d/2d/3d, Embedding, MultiheadAttention and the RNN "
        "cells; PEFT's format holds it for Linear, Conv1d and Conv2d layers"
    )
