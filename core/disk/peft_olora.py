"""A PEFT adapter made with ``init_lora_weights="olora"``, read as the plain LoRA adapter it equals.

OLoRA starts from the QR decomposition of each base weight, ``W = Q·R``: ``B = Q[:, :r]``,
``A = R[:r]``, and the base becomes the residual ``W - s·B₀·A₀``.  PEFT re-runs that (deterministic)
decomposition on the base when it loads such a folder, so the layer computes
``(W - s·Q_r·R_r) + s·B·A`` with the file's trained ``B``, ``A``.  That is the plain LoRA update of
rank 2r on the base as it is::

    A' = [A; R_r]   (2r x in)        B' = [B, -Q_r]   (out x 2r)        alpha' = 2·alpha (rsLoRA: sqrt(2)·alpha)

which is what PEFT's ``path_initial_model_for_weight_conversion`` writes, and what the studio
loads instead: the base is never rewritten.  PEFT runs OLoRA on ``nn.Linear`` weights; a folder
that claims it for another layer type is refused naming the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import iter_logical_modules
from .peft_lora_format import factor_paths


def _is_olora(peft: dict) -> bool:
    value = peft.get("init_lora_weights")
    return isinstance(value, str) and value.lower() == "olora"


def _scale_factor(use_rslora: bool) -> float:
    # The same scale at rank 2r: alpha/r needs 2·alpha, alpha/sqrt(r) needs sqrt(2)·alpha (PEFT's rule).
    return 2**0.5 if use_rslora else 2.0


def olora_as_plain_lora(
    peft: dict, tensors: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of the equivalent plain LoRA adapter when ``peft`` says OLoRA; else both unchanged."""
    if not _is_olora(peft):
        return peft, tensors
    rslora = bool(peft.get("use_rslora", False))
    logical = {lm.name: lm.module for lm in iter_logical_modules(model)}
    converted = dict(tensors)
    for path in factor_paths(tensors):
        base = logical.get(path)
        a_key, b_key = f"{path}.lora_A.weight", f"{path}.lora_B.weight"
        if not isinstance(base, nn.Linear) or a_key not in tensors or b_key not in tensors:
            raise ValueError(
                f"{path}: this adapter was saved with init_lora_weights='olora', which PEFT runs on nn.Linear "
                f"layers only, and this layer is {type(base).__name__}; re-save it in PEFT with "
                "path_initial_model_for_weight_conversion to get a plain LoRA adapter"
            )
        a, b = tensors[a_key], tensors[b_key]
        r = a.shape[0]
        q, rr = torch.linalg.qr(base.weight.detach().to(torch.float32))  # PEFT's olora_init, in float32 too
        converted[a_key] = torch.cat([a.to(torch.float32), rr[:r]], dim=0)
        converted[b_key] = torch.cat([b.to(torch.float32), -q[:, :r]], dim=1)
    factor = _scale_factor(rslora)  # each layer's scale s stays: s·B'·A' = s·B·A - s·Q_r·R_r
    plain = dict(peft)
    plain["init_lora_weights"] = True
    plain["r"] = 2 * int(peft["r"])
    plain["lora_alpha"] = float(peft.get("lora_alpha", peft["r"])) * factor
    plain["rank_pattern"] = {k: 2 * int(v) for k, v in (peft.get("rank_pattern") or {}).items()}
    plain["alpha_pattern"] = {k: float(v) * factor for k, v in (peft.get("alpha_pattern") or {}).items()}
    return plain, converted


__all__ = ["olora_as_plain_lora"]
