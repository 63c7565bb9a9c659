"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024).

Each adapted weight is split into a magnitude and a direction (section 3)::

    W' = m · (W + s·B·A) / ||W + s·B·A||_c

``||·||_c`` is the norm of each output row of the weight seen as an (out, in)
matrix, so ``m`` holds one trainable number per output unit; it starts as
``||W||_c`` and B starts at zero, so a fresh adapter is the identity.  The low-rank
update only steers the direction.  As the paper's section 4.3 suggests (and PEFT
does), the norm is treated as a constant in backpropagation: it follows B·A in
forward but receives no gradient, which saves memory and barely changes accuracy.

For an input-side layer the forward needs no merged weight (PEFT's form)::

    y = base(x) + (m/n - 1)·(W x) + (m/n)·s·B(A(x))        n = ||W + s·B·A||_c

Merging writes ``W'`` into the base; unmerging needs the norm used at merge time,
which cannot be recovered from ``W'`` (its rows have norm ``m``), so merge caches
it and unmerge computes ``W = W'·n/m - s·B·A`` exactly (PEFT does the same).

The magnitude lives in ``lora_magnitude_vector[adapter]`` with PEFT's shape
(``(out,)``, or ``(1, out, 1, ...)`` for convolutions), so saved keys and shapes are PEFT's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora, WeightSpaceLora
from ..layers.base import WeightSlot
from .registry import Variant, register_variant

# PEFT's name. A ParameterDict entry saves as "<layer>.lora_magnitude_vector", the key PEFT writes to disk
# (its in-memory ".weight" suffix is dropped on save and added back on load: a legacy of its own layout).
MAGNITUDE = "lora_magnitude_vector"


def _row_norm(slot: WeightSlot, weight: torch.Tensor) -> torch.Tensor:
    """``||weight||_c``: the norm of each output row of the weight as an (out, in) matrix."""
    return torch.linalg.vector_norm(slot.matrix(weight), dim=1)


def _scale_rows(slot: WeightSlot, weight: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``weight`` with each output row multiplied by ``factor`` (shape (out,)), in the weight's layout."""
    return slot.layout(slot.matrix(weight) * factor[:, None])


class DoraBehaviour(AdapterBehaviour):
    """One DoRA adapter on one input-side layer (Linear, GPT-2 Conv1D, ConvNd, Embedding)."""
    forward_path = "own"  # magnitude times the direction of W + s·B·A
    update_form = "own"
    merge_is_per_slot = False  # the merge also caches the norms unmerge needs

    def __init__(self) -> None:
        # The row norms of W + s·B·A at merge time, per weight key: what an exact unmerge needs.
        self._merge_norms: dict[str, torch.Tensor] = {}

    # -- parameters -----------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """A and B as for LoRA, plus the magnitude vector (registered so freezing and saving see it)."""
        super().create(layer, adapter, r)
        if MAGNITUDE not in layer._modules:
            layer.add_module(MAGNITUDE, nn.ParameterDict())
            layer.factor_attributes.append(MAGNITUDE)
        slot = layer.weight_slots()["weight"]
        out = slot.matrix(slot.param).shape[0]
        shape = (1, out) + (1,) * (slot.param.dim() - 2) if isinstance(layer, ConvLora) else (out,)
        kw = {"device": layer.factor_device(), "dtype": layer.factor_dtype()}
        layer._modules[MAGNITUDE][adapter] = nn.Parameter(torch.empty(shape, **kw))

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """LoRA's init of A and B, then ``m = ||W + s·B·A||_c`` (section 3), so the adapter starts as the identity."""
        super().initialise(layer, adapter, init, untie)
        slot = layer.weight_slots()["weight"]
        norm = _row_norm(slot, slot.param.float() + super().delta_weight(layer, adapter, "weight"))
        magnitude = self._magnitude(layer, adapter)
        magnitude.copy_(norm.reshape(magnitude.shape))

    def delete(self, layer: AdapterLayer, adapter: str) -> None:
        super().delete(layer, adapter)
        self._merge_norms.clear()

    @staticmethod
    def _magnitude(layer: AdapterLayer, adapter: str) -> nn.Parameter:
        return layer._modules[MAGNITUDE][adapter]

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, layer: AdapterLayer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``base(x) + (m/n - 1)·W x + (m/n)·s·B A x``, with ``n`` detached (section 4.3)."""
        a, b = self.factors(layer, adapter, "weight")
        slot = layer.weight_slots()["weight"]
        weight = slot.param
        scaling = layer.scaling[adapter]
        lora_matrix = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
        norm = torch.linalg.vector_norm(slot.matrix(weight).to(a.dtype) + scaling * lora_matrix.detach(), dim=1)
        factor = self._magnitude(layer, adapter).reshape(-1) / norm.detach()
        dropout = layer.lora_dropout[adapter]
        if x.is_floating_point():
            x = x.to(a.dtype)
        if x.is_floating_point() and layer.training and not isinstance(dropout, nn.Identity):
            # W x must see the same dropped-out input as B A x, so it is recomputed (PEFT does this too).
            x = dropout(x)
            base = layer.apply_weight(x, weight.to(x.dtype))
        else:
            base = result.to(a.dtype)
            bias = getattr(layer.base_layer, "bias", None)
            if bias is not None:
                base = base - _per_channel(layer, bias.to(a.dtype), base)
        lora = layer.project_up(layer.project_down(x, a, adapter), b, adapter) * scaling
        factor = _per_channel(layer, factor, base)
        return result + ((factor - 1) * base + factor * lora).to(result.dtype)

    # -- the update and merging --------------------------------------------------------------------
    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        """``W' - W`` for the current base weight ``W``, in float32."""
        weight = layer.weight_slots()[key].param.float()
        return self.merged_weight(layer, adapter, key, weight) - weight

    def merged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """``W' = m · (W + s·B·A) / ||W + s·B·A||_c`` in float32."""
        slot = layer.weight_slots()[key]
        combined = weight + super().delta_weight(layer, adapter, key)
        norm = _row_norm(slot, combined)
        return _scale_rows(slot, combined, self._magnitude(layer, adapter).reshape(-1).float() / norm)

    def unmerged_weight(self, layer: AdapterLayer, adapter: str, key: str, weight: torch.Tensor) -> torch.Tensor:
        """``W = W' · n / m - s·B·A`` with the norm ``n`` cached at merge time."""
        slot = layer.weight_slots()[key]
        norm = self._merge_norms[key]
        direction = _scale_rows(slot, weight, norm / self._magnitude(layer, adapter).reshape(-1).float())
        return direction - super().delta_weight(layer, adapter, key)

    def merge(self, layer: AdapterLayer, adapter: str, untie: frozenset[str]) -> None:
        """Cache the norms of ``W + s·B·A`` (unmerge needs them), then merge as usual."""
        for key, slot in layer.weight_slots().items():
            combined = slot.param.float() + super().delta_weight(layer, adapter, key)
            self._merge_norms[key] = _row_norm(slot, combined)
        super().merge(layer, adapter, untie)

    def unmerge(self, layer: AdapterLayer, adapter: str) -> None:
        super().unmerge(layer, adapter)
        self._merge_norms.clear()


def _per_channel(layer: AdapterLayer, vector: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``vector`` (one value per output unit) shaped to broadcast over ``output``'s channel axis."""
    if isinstance(layer, ConvLora):  # (batch, channels, *spatial)
        return vector.reshape((1, -1) + (1,) * (output.dim() - 2))
    return vector  # Linear, Conv1D and Embedding put the output units last


class Dora(Variant):
    name = "dora"
    title = "DoRA"
    description = (
        "Weight-Decomposed Low-Rank Adaptation: each weight is split into a magnitude (one trainable "
        "number per output unit) and a direction; a LoRA update B·A changes the direction, which is "
        "renormalised, and the magnitude is learned separately. It starts as the base model, often "
        "matches full fine-tuning more closely than LoRA at the same rank, and merges into the weight. "
        "It costs more memory and time per step than LoRA (the weight norm is recomputed each step)."
    )
    paper = (
        "Liu et al., 'DoRA: Weight-Decomposed Low-Rank Adaptation', ICML 2024 (arXiv:2402.09353); "
        "the norm is detached from the gradient as its section 4.3 suggests"
    )
    # Written only when set, so older PEFT versions never meet the key.
    peft_lora_flags = {"use_dora": True}

    def unsupported_reason(self, layer: AdapterLayer) -> str | None:
        """Weight-space layers (MultiheadAttention, RNN cells) hold several weights read directly; refused."""
        if isinstance(layer, WeightSpaceLora):
            return (
                "DoRA's magnitude is defined per output unit of one weight matrix, and this layer is adapted "
                "in weight space across several packed weights (PEFT has no DoRA form for it either); use "
                "the 'lora' variant for it, or leave it out of targets"
            )
        return None

    def behaviour(self, layer: AdapterLayer, settings: object) -> AdapterBehaviour:
        return DoraBehaviour()


register_variant(Dora())
