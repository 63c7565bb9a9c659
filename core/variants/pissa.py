"""PiSSA: LoRA whose factors start on the weight's principal singular directions (Meng et al. 2024).

With ``W = U S Vᵀ`` and scaling ``s``, the adapter takes the top-r part and the
frozen base keeps the residual (section 3)::

    B = U_r · sqrt(S_r / s)      A = sqrt(S_r / s) · V_rᵀ      W_res = W - s·B·A

so ``W_res + s·B·A = W``: the adapted model starts *exactly* as the original
model (up to float rounding), while the base alone (adapters disabled) is the
residual model.  Training then updates the principal components directly,
which the paper finds converges faster than LoRA's zero-started update.
Forward, merge and unmerge are LoRA's; merging gives ``W_res + s·ΔBA``, i.e. the
original weight plus what was learned.

The engine computes the SVD (``AdapterLayer._pissa_init``, a full SVD, so the
residual is reproducible); this variant forces it whatever ``init`` says.  Weights
shared with another module (GPT-2's tied embedding and output head) are given
their own copy first, so only the adapted layer holds the residual.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, wrapper_for
from .registry import Variant, register_variant


class PissaBehaviour(AdapterBehaviour):
    """LoRA with PiSSA's initialisation, whatever the configured ``init``."""

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """Principal singular triplets into B and A, the residual into the base (section 3)."""
        layer._pissa_init(adapter, untie)


def _untie_targets(model: nn.Module, targets: list[str]) -> None:
    """Give each target weight that another module shares its own copy (same values)."""
    from ..adapters import _shared_parameter_ids  # late: the adapters module imports the registry

    shared = _shared_parameter_ids(model)
    for name in targets:
        layer = model.get_submodule(name)
        if not isinstance(layer, AdapterLayer):
            layer = wrapper_for(layer)[0](layer)  # a throw-away wrapper: it writes into the real module
        for key, slot in layer._weight_slots().items():
            if id(slot.param) in shared:
                warnings.warn(
                    f"layer {name!r} shares its {key} with another module (tied weights); PiSSA gives it its own "
                    "copy, so the residual it leaves there does not change the other module",
                    stacklevel=4,
                )
                copy = nn.Parameter(slot.param.detach().clone(), requires_grad=slot.param.requires_grad)
                layer._set_base_weight(key, copy)


class Pissa(Variant):
    name = "pissa"
    title = "PiSSA"
    description = (
        "Principal Singular values and Singular vectors Adaptation: LoRA whose A and B start as the top-r "
        "singular directions of each weight, while the frozen base keeps only the residual. The model "
        "starts exactly as the original, but training changes the weight's most important components "
        "directly, which converges faster than LoRA in the paper. Needs r <= the smaller weight dimension; "
        "merges like LoRA. With adapters disabled the model is the residual, not the original."
    )
    paper = (
        "Meng, Wang and Zhang, 'PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large "
        "Language Models', NeurIPS 2024 (arXiv:2404.02948)"
    )
    # The adapted model equals the *original* model, but the base under it (what disabling adapters
    # shows) is the residual, so "adapter output == base output" does not hold.
    starts_as_identity = False
    combinable = True  # plain A/B factors
    # PEFT holds PiSSA as init_lora_weights="pissa", not as a variant; until the writer maps it, the
    # adapter is saved in the studio's own form (PEFT would load the factors on the original base).
    peft_type = None

    def prepare_model(self, model: nn.Module, targets: list[str], settings: object) -> None:
        """Untie shared target weights: PiSSA rewrites the base weight it adapts."""
        _untie_targets(model, targets)

    def behaviour(self, layer: AdapterLayer, settings: object) -> AdapterBehaviour:
        return PissaBehaviour()


register_variant(Pissa())
