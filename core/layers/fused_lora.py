"""Standard LoRA on a linear layer as one autograd function that saves only what backward needs.

Written op by op, ``result + s · B(A(dropout(x.to(A.dtype))))`` keeps for backward, per
adapted layer: the input cast to the factors' dtype (a new float32 copy over a
half-precision base), and with dropout the dropped copy of the input *and* its mask --
separately for q, k and v although they read the same input (PEFT does the same).  Only
three things are needed to get every gradient back::

        x ──(saved as is: one storage, shared by every layer that reads it)
        h = A · dropout(x)        (saved: rank r, small)
        the RNG state before the dropout (a few bytes: the mask is drawn again in backward)

Backward (``g`` = grad of the output, ``m`` = the dropout mask scaled by 1/(1-p))::

        g_up = s·g          dB = g_upᵀ h          g_h = g_up B
        dA   = g_hᵀ (m ⊙ x)                       dx  = m ⊙ (g_h A)      d(result) = g

Redrawing the mask from a saved RNG state is how ``torch.utils.checkpoint`` recomputes
dropout (``preserve_rng_state``); one custom autograd function per LoRA projection that
saves the shared input once is the idea of Unsloth's ``LoRA_QKV``/``LoRA_MLP``
(``unsloth/kernels/fast_lora.py``), here without dropping dropout.  The result is the unfused path's, bit for bit in the forward
and up to summation order in the gradients (tests/core/test_fused_lora.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator ``F.dropout`` draws from on ``device``."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _dropout_scale(state: torch.Tensor, like: torch.Tensor, dtype: torch.dtype, p: float) -> torch.Tensor:
    """The mask ``F.dropout`` drew from ``state`` for an input shaped like ``like``, times 1/(1-p).

    Dropout on ones gives exactly mask/(1-p), from the same kernel and the same number of draws
    as the forward's dropout; the generator is put back afterwards, so backward consumes no
    randomness (as the unfused backward does not).
    """
    now = _rng_state(like.device)
    _set_rng_state(like.device, state)
    try:
        return F.dropout(torch.ones(like.shape, dtype=dtype, device=like.device), p, True)
    finally:
        _set_rng_state(like.device, now)


class FusedLinearLora(torch.autograd.Function):
    """``result + s · B A dropout(x)`` for ``F.linear``-style factors A (r, in) and B (out, r)."""

    @staticmethod
    def forward(ctx, x, result, a, b, scaling: float, p: float):  # noqa: D102 - see the class
        state = _rng_state(x.device) if p > 0 else None
        xa = x.to(a.dtype)  # no copy when the dtypes agree; never saved
        if p > 0:
            xa = F.dropout(xa, p, True)
        h = F.linear(xa, a)
        del xa  # the dropped copy dies here: backward redraws the mask
        out = result + (F.linear(h, b) * scaling).to(result.dtype)
        ctx.save_for_backward(x, a, b, h, *([state] if state is not None else []))
        ctx.scaling, ctx.p = scaling, p
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102 - see the class
        x, a, b, h, *state = ctx.saved_tensors
        need_x, need_result, need_a, need_b = ctx.needs_input_grad[:4]
        g_up = grad.to(b.dtype) * ctx.scaling
        g_up2 = g_up.reshape(-1, g_up.shape[-1])
        grad_b = g_up2.t().mm(h.reshape(-1, h.shape[-1])) if need_b else None
        g_h = g_up.matmul(b)
        scale = _dropout_scale(state[0], x, a.dtype, ctx.p) if ctx.p > 0 else None
        grad_a = grad_x = None
        if need_a:
            xd = x.to(a.dtype) if scale is None else x.to(a.dtype) * scale
            grad_a = g_h.reshape(-1, g_h.shape[-1]).t().mm(xd.reshape(-1, xd.shape[-1]))
            del xd
        if need_x:
            grad_x = g_h.matmul(a)
            if scale is not None:
                grad_x = grad_x * scale
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad if need_result else None, grad_a, grad_b, None, None


def fused_linear_lora(
    x: torch.Tensor, result: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, p: float
) -> torch.Tensor:
    """``result + scaling · F.linear(F.linear(dropout_p(x), a), b)``, saving only x, h and an RNG state."""
    return FusedLinearLora.apply(x, result, a, b, scaling, p)
