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

**Grouped convolutions** follow PEFT 0.21 exactly (``peft/tuners/lora/dora.py``
``_DoraConvNdLayer``): B is a grouped 1×1 conv ``(out, r/g, 1, ...)`` and the matrix in
the norm is PEFT's ``(B.view(-1, r) @ A.view(r, -1))`` reshaped to the grouped weight's
shape.  For ``groups == 1`` that is ``B·A``; for ``groups > 1`` it is PEFT's own
definition (not the update the layer applies, which no grouped weight can hold), kept
so that a grouped DoRA adapter gives the same outputs here and in PEFT.  Such an adapter
cannot be merged (PEFT refuses too; see :mod:`lora_studio.core.layers.conv`), and
:meth:`DoraBehaviour.delta_weight` gives its update as an ungrouped conv weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, ConvLora, WeightSpaceLora
from ..layers.base import WeightSlot
from ..layers.conv import grouped_rank_reason
from .registry import Variant, register_variant

# PEFT's name. A ParameterDict entry saves as "<layer>.lora_magnitude_vector", the key PEFT writes to disk
# (its in-memory ".weight" suffix is dropped on save and added back on load: a legacy of its own layout).
MAGNITUDE = "lora_magnitude_vector"


def _row_norm(slot: WeightSlot, weight: torch.Tensor) -> torch.Tensor:
    """``||weight||_c``: the norm of each output row of the weight as an (out, in) matrix."""
    return torch.linalg.vector_norm(slot.matrix(weight), dim=1)


def _lora_matrix(slot: WeightSlot, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The unscaled matrix PEFT's DoRA norm reads, in the shape of ``slot.matrix(weight)``: ``B·A``, and
    for a grouped conv PEFT's ``B.view(-1, r) @ A.view(r, -1)`` reshaped to the grouped weight."""
    r = a.shape[0]
    return (b.reshape(-1, r) @ a.reshape(r, -1)).reshape(slot.matrix(slot.param).shape)


def _scale_rows(slot: WeightSlot, weight: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``weight`` with each output row multiplied by ``factor`` (shape (out,)), in the weight's layout."""
    return slot.layout(slot.matrix(weight) * factor[:, None])


class DoraBehaviour(AdapterBehaviour):
    """One DoRA adapter on one input-side layer (Linear, GPT-2 Conv1D, ConvNd, Embedding)."""
    forward_path = "own"  # magnitude times the direction of W + s·B·A
    update_form = "own"
    merge_is_per_slot = False  # the merge also caches the norms unmerge needs
    adapts_grouped_convs = True  # PEFT's grouped DoRA (see the module docstring)

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
        a, b = self.factors(layer, adapter, "weight")
        lora = slot.layout(_lora_matrix(slot, a.float(), b.float())) * layer.scaling[adapter]
        norm = _row_norm(slot, slot.param.float() + lora)
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
        lora_matrix = _lora_matrix(slot, a, b)
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
        """``W' - W`` for the current base weight ``W``, in float32; on a grouped conv the update the
        layer applies, ``(m/n)·(W + s·ΔW) - W`` as ungrouped ``(out, in, *kernel)`` weights."""
        if isinstance(layer, ConvLora) and layer.grouped:
            return self._grouped_delta(layer, adapter)
        weight = layer.weight_slots()[key].param.float()
        return self.merged_weight(layer, adapter, key, weight) - weight

    def _grouped_delta(self, layer: ConvLora, adapter: str) -> torch.Tensor:
        slot = layer.weight_slots()["weight"]
        a, b = (t.float() for t in self.factors(layer, adapter, "weight"))
        scaling = layer.scaling[adapter]
        weight = slot.param.float()
        norm = torch.linalg.vector_norm(slot.matrix(weight) + scaling * _lora_matrix(slot, a, b), dim=1)
        factor = self._magnitude(layer, adapter).reshape(-1).float() / norm
        full = layer.ungrouped_weight(weight)
        adapted = full + layer.ungrouped_lora_update(a, b) * scaling
        return factor.reshape((-1,) + (1,) * (full.dim() - 1)) * adapted - full

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

    def rank_problem(self, layer: AdapterLayer, name: str, rank: int) -> str | None:
        """On a grouped conv B is grouped, so the rank must split evenly over the groups (PEFT's rule)."""
        if isinstance(layer, ConvLora) and rank % layer.base_layer.groups:
            return f"layer {name!r}: {grouped_rank_reason(layer.base_layer, rank)}"
        return None

    def behaviour(self, layer: AdapterLayer, settings: object) -> AdapterBehaviour:
        return DoraBehaviour()


register_variant(Dora())
