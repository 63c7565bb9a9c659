"""LoHa: a low-rank Hadamard product update (Hyeon-Woo et al. 2022, FedPara; LyCORIS, Yeh et al. 2024).

FedPara (section 3, eq. 2) writes a weight as the element-wise product of two
rank-r matrices, whose rank can reach r², not r::

    ΔW = s · (W1a @ W1b) ⊙ (W2a @ W2b)        W1a, W2a: (out, r)   W1b, W2b: (r, in)   s = alpha / r

With 2·r·(out+in) parameters, twice LoRA's, LoHa reaches updates LoRA would need rank r² for.
W2b starts at zero (the others Kaiming-uniform), so the adapter starts as the identity,
as PEFT and LyCORIS initialise it.  Convolutions use the flattened (out, in/groups·k...)
matrix, PEFT's default; with ``use_effective_conv2d`` a Conv1d/Conv2d kernel is
CP-decomposed as PEFT (and LyCORIS) do it::

    ΔW = s · rebuild(T1, W1a, W1b) ⊙ rebuild(T2, W2a, W2b)
    rebuild(T, Wa, Wb)[p, q, k, l] = Σ_ij T[i, j, k, l] · Wa[i, p] · Wb[j, q]
    T: (r, r, kh, kw)   Wa: (r, out)   Wb: (r, in/groups)

``rank_dropout`` and ``module_dropout`` are PEFT's (see :mod:`.lycoris`).  Tensor names and
shapes are PEFT's, so the saved file is PEFT's ``LOHA`` format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .lycoris import (
    LycorisSettings,
    ProductUpdateBehaviour,
    cp_core_shape,
    cp_rebuild,
    kaiming_,
    supported_layers_text,
    uses_cp,
)
from .registry import Variant, register_variant

HADA_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class HadamardBehaviour(ProductUpdateBehaviour):
    """One LoHa adapter on one layer: four factors per adapted weight."""

    variant_title = "LoHa"

    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        for key, slot in layer.weight_slots().items():
            rows, cols = slot.matrix(slot.param).shape
            if uses_cp(layer, self.settings):  # PEFT's CP form: factors (r, out), (r, in/groups), core (r, r, k..)
                in_channels = slot.param.shape[1]
                for side in ("1", "2"):
                    self.new_factor(layer, f"hada_t{side}", adapter, key, cp_core_shape(layer, r))
                    self.new_factor(layer, f"hada_w{side}_a", adapter, key, (r, rows))
                    self.new_factor(layer, f"hada_w{side}_b", adapter, key, (r, in_channels))
                continue
            for side in ("1", "2"):
                self.new_factor(layer, f"hada_w{side}_a", adapter, key, (rows, r))
                self.new_factor(layer, f"hada_w{side}_b", adapter, key, (r, cols))

    def init_factors(self, layer: AdapterLayer, adapter: str, key: str) -> None:
        w1a, w1b, w2a, w2b = (self.factor(layer, name, adapter, key) for name in HADA_FACTORS)
        for param in (w1a, w1b, w2a):
            kaiming_(param)
        nn.init.zeros_(w2b)  # one zero factor makes the Hadamard product zero: the base output is unchanged
        for core in ("hada_t1", "hada_t2"):
            param = self.factor(layer, core, adapter, key)
            if param is not None:
                kaiming_(param)

    def product(self, layer: AdapterLayer, adapter: str, key: str, dtype: torch.dtype) -> torch.Tensor:
        w1a, w1b, w2a, w2b = (self.factor(layer, name, adapter, key).to(dtype) for name in HADA_FACTORS)
        t1 = self.factor(layer, "hada_t1", adapter, key)
        if t1 is not None:  # CP: (out, in/groups, kh, kw), Conv1d (out, in/groups, k, 1)
            t2 = self.factor(layer, "hada_t2", adapter, key)
            return cp_rebuild(t1.to(dtype), w1a, w1b) * cp_rebuild(t2.to(dtype), w2a, w2b)
        return (w1a @ w1b) * (w2a @ w2b)


@dataclass
class LohaSettings(LycorisSettings):
    """LoHa's settings: PEFT's ``LoHaConfig`` fields ``rank_dropout``, ``module_dropout``, ``use_effective_conv2d``."""


class Loha(Variant):
    name = "loha"
    title = "LoHa"
    description = (
        "Low-rank Hadamard product (LyCORIS): the update is the element-wise product of two rank-r "
        "matrices, (alpha/r)·(W1a·W1b)⊙(W2a·W2b), whose rank can reach r² while it costs about twice "
        "LoRA's parameters. One factor starts at zero, so training starts from the base model exactly, "
        "and the update merges into the weight for inference at no extra cost. " + supported_layers_text("LoHa") + "."
    )
    paper = (
        "Hyeon-Woo, Ye-Bin, Oh, 'FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated "
        "Learning', ICLR 2022 (arXiv:2108.06098); Yeh et al., 'Navigating Text-To-Image Customization: From "
        "LyCORIS Fine-Tuning to Model Evaluation', ICLR 2024 (arXiv:2309.14859)"
    )
    peft_type = "LOHA"
    settings_class = LohaSettings

    def behaviour(self, layer: AdapterLayer, settings: Any) -> AdapterBehaviour:
        return HadamardBehaviour(settings or LohaSettings())


register_variant(Loha())
