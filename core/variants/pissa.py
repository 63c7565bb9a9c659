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
residual is reproducible); this variant forces it (``forced_init``) whatever ``init``
says, so ``attach`` checks the ranks before anything changes and gives weights
shared with another module (GPT-2's tied embedding and output head) their own
copy, exactly as for ``init="pissa"``.
"""

from __future__ import annotations

from .registry import Variant, register_variant


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
    forced_init = "pissa"


register_variant(Pissa())
