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
recurrent cells) use ``W + ΔW`` directly.

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

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora, EmbeddingLora, WeightSlot, WeightSpaceLora
from ..layers.weight_space import param_key

#: How a fresh LyCORIS adapter is initialised; LoRA's Gaussian init has no LoHa/LoKr form.
INIT_NAME = "default"


class ProductUpdateBehaviour(AdapterBehaviour):
    """An adapter whose update is a whole weight-shaped ΔW computed from its factors.

    Subclasses give :meth:`create` (through :meth:`new_factor`), :meth:`init_factors` and
    :meth:`product` (the unscaled ΔW, in any shape holding the weight's elements in its
    row-major order).
    """
    forward_path = "own"  # the update is a product of its own factors, not B·A
    update_form = "own"

    variant_title: str = ""  # names the variant in errors

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
    def delta(self, layer: AdapterLayer, adapter: str, key: str, dtype: torch.dtype) -> torch.Tensor:
        """``s · product`` in weight ``key``'s own layout, computed in ``dtype``."""
        slot = layer.weight_slots()[key]
        matrix = self.product(layer, adapter, key, dtype).reshape(slot.matrix(slot.param).shape)
        delta = slot.layout(matrix) * layer.scaling[adapter]
        if isinstance(layer, EmbeddingLora) and layer.base_layer.padding_idx is not None:
            # The padding row is never trained in the base model; keep it unchanged in forward and merge alike
            # (LoRA keeps A's padding column at zero for the same reason).
            pad = torch.tensor([layer.base_layer.padding_idx], device=delta.device)
            delta = delta.index_fill(0, pad, 0.0)
        return delta

    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        return self.delta(layer, adapter, key, torch.float32)

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta(layer, adapter, "weight", layer.factor_dtype())
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(delta.dtype))
        return layer.apply_weight(x, delta)

    def effective_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta(layer, adapter, key, layer.factor_dtype()).to(weight.dtype)


def kaiming_(param: nn.Parameter) -> None:
    """Kaiming-uniform with a=sqrt(5), as ``nn.Linear``, LyCORIS and PEFT initialise the non-zero factors."""
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))


def weight_dims(layer: AdapterLayer, slot: WeightSlot) -> tuple[int, int, tuple[int, ...]]:
    """(output size, input size, kernel size) of an adapted weight; the kernel is ``()`` outside convolutions."""
    if isinstance(layer, ConvLora):
        base = layer.base_layer
        return base.out_channels, base.in_channels, tuple(base.kernel_size)
    rows, cols = slot.matrix(slot.param).shape
    return rows, cols, ()


def supported_layers_text(title: str) -> str:
    """The layer types a LyCORIS variant adapts here, and which of them PEFT can load."""
    return (
        f"{title} adapts Linear, transformers Conv1D, Conv1d/2d/3d, Embedding, MultiheadAttention and the RNN "
        "cells; PEFT's format holds it for Linear, Conv1d and Conv2d layers"
    )
