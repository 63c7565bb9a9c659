"""Standard LoRA on a linear or convolution layer as one autograd function that saves only what backward needs.

Written op by op, ``result + s · B(A(dropout(x.to(A.dtype))))`` keeps for backward, per
adapted layer: the input cast to the factors' dtype (a new float32 copy over a
half-precision base), and with dropout the dropped copy of the input *and* its mask --
separately for q, k and v although they read the same input (PEFT does the same).  Only
three things are needed to get every gradient back::

        x ──(saved as is: one storage, shared by every layer that reads it)
        h = s · A · dropout(x)    (saved: rank r, small)
        the dropout mask           (saved as one byte per element, not a float copy of x)

Backward (``g`` = grad of the output, ``m`` = the dropout mask, 0 or 1)::

        h = s·A·(m ⊙ x)/(1-p)     dB = gᵀ h          g_h = s·(g B)/(1-p)
        dA = g_hᵀ (m ⊙ x)                          dx = m ⊙ (g_h A)       d(result) = g

When ``x`` is itself the result of an elementwise op whose operands autograd already keeps
for that op's own backward -- ``gelu(u)`` keeps ``u``; GPT-2's ``0.5·u · (1 + tanh(…))``
keeps both factors -- the function keeps those operands instead of ``x`` and redoes the op
in backward (the same kernel on the same values: the same bits).  ``x``, typically the
4×-wide MLP activation, is then saved by nobody, as in the frozen model, which keeps no
input of a frozen linear layer at all.  Under ``saved_tensors_hooks`` (non-reentrant
activation checkpointing, ``save_on_cpu``) reading another node's saved tensor would unpack
it, so there ``x`` is kept as is.

The mask could be redrawn in backward from a saved RNG state instead (as
``torch.utils.checkpoint`` does with ``preserve_rng_state``); on a CPU the Bernoulli draw
costs far more than the byte per element, so it is kept.  One custom autograd function per
LoRA projection that saves the shared input once is the idea of Unsloth's
``LoRA_QKV``/``LoRA_MLP`` (``unsloth/kernels/fast_lora.py``), here without dropping dropout.
The scaling s is applied to the rank-r h rather than to the output (one output-sized pass
fewer), so results equal the op-by-op path's up to rounding (float32: 1e-6 relative;
tests/core/test_fused_lora.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _gelu_tanh(u: torch.Tensor) -> torch.Tensor:
    return F.gelu(u, approximate="tanh")


def _saved_tensor_hooks_active() -> bool:
    """True under ``saved_tensors_hooks`` (non-reentrant activation checkpointing, ``save_on_cpu``):
    there, reading another node's saved tensor would unpack it -- recompute or copy it back."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None


def _producer(x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Callable[..., torch.Tensor]] | None:
    """The operands autograd already keeps for the op that made ``x``, and how to redo it; None if
    ``x`` did not come straight from such an op (a view or an in-place change gives another node)."""
    node = x.grad_fn
    if node is None or _saved_tensor_hooks_active():
        return None
    name = type(node).__name__
    try:
        if name == "GeluBackward0":
            approximate = node._saved_approximate
            if approximate not in ("none", "tanh"):
                return None
            operands, redo = (node._saved_self,), (F.gelu if approximate == "none" else _gelu_tanh)
        elif name == "MulBackward0":
            operands, redo = (node._saved_self, node._saved_other), torch.mul
        else:
            return None
    except RuntimeError:  # an operand autograd did not keep
        return None
    if any(not torch.is_tensor(t) or t.shape != x.shape or t.dtype != x.dtype for t in operands):
        return None  # broadcasting or type promotion: keep x itself rather than reason about it
    return operands, redo


def _dropout_with_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.dropout(x, p, training=True)`` bit for bit, with the same random draws, and its mask.

    Where ``F.dropout`` runs the fused kernel (CUDA, XPU) that kernel is called and returns the
    mask itself; elsewhere (CPU) this is ATen's ``_dropout_impl``: a Bernoulli draw in x's dtype,
    divided by 1-p, times x.
    """
    if x.is_cuda or x.is_xpu:
        return torch.native_dropout(x, p, True)
    noise = torch.empty_like(x).bernoulli_(1 - p)
    keep = noise.bool()
    return x * noise.div_(1 - p), keep


@dataclass(frozen=True)
class LinearProjections:
    """A (r, in) and B (out, r) applied as ``F.linear`` over the last dimension (Linear, GPT-2 Conv1D)."""

    def down(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return F.linear(x, a)

    def up(self, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(h, b)

    def up_grads(self, g_up: torch.Tensor, h: torch.Tensor, b: torch.Tensor, need_b: bool):
        """(grad of h, grad of B)."""
        grad_b = g_up.reshape(-1, g_up.shape[-1]).t().mm(h.reshape(-1, h.shape[-1])) if need_b else None
        return g_up.matmul(b), grad_b

    def down_grads(self, g_h: torch.Tensor, xd: torch.Tensor, a: torch.Tensor, need_x: bool, need_a: bool):
        """(grad of the dropped input, grad of A)."""
        grad_a = g_h.reshape(-1, g_h.shape[-1]).t().mm(xd.reshape(-1, xd.shape[-1])) if need_a else None
        return (g_h.matmul(a) if need_x else None), grad_a


@dataclass(frozen=True)
class ConvProjections:
    """A as an N-d convolution with the base layer's geometry, B as a 1×1 convolution (zero padding)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    def _conv(self, x, w, stride, padding, dilation):
        return torch.convolution(x, w, None, stride, padding, dilation, False, [0] * len(stride), 1)

    def _backward(self, grad, x, w, stride, padding, dilation, need_x, need_w):
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, stride, padding, dilation, False, [0] * len(stride), 1, [need_x, need_w, False])
        return gx, gw

    def down(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._conv(x, a, self.stride, self.padding, self.dilation)

    def up(self, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ones, zeros = [1] * len(self.stride), [0] * len(self.stride)
        return self._conv(h, b, ones, zeros, ones)

    def up_grads(self, g_up, h, b, need_b: bool):
        ones, zeros = [1] * len(self.stride), [0] * len(self.stride)
        return self._backward(g_up, h, b, ones, zeros, ones, True, need_b)

    def down_grads(self, g_h, xd, a, need_x: bool, need_a: bool):
        return self._backward(g_h, xd, a, self.stride, self.padding, self.dilation, need_x, need_a)


class FusedLora(torch.autograd.Function):
    """``result + s · up(B, down(A, dropout(x)))`` for the ``projections`` of one layer type."""

    @staticmethod
    def forward(ctx, x, result, a, b, scaling: float, p: float, projections):  # noqa: D102 - see the class
        xa = x.to(a.dtype)  # no copy when the dtypes agree; never saved
        keep = None
        if p > 0:
            xa, keep = _dropout_with_mask(xa, p)  # keep: one byte per element, instead of a float copy
        # The scaling goes on the rank-r h, not on the output: one output-sized pass fewer.
        h = projections.down(xa, a).mul_(scaling)
        del xa  # the dropped copy dies here
        up = projections.up(h, b)
        out = up.add_(result) if up.dtype == result.dtype else result + up.to(result.dtype)
        producer = _producer(x)
        operands, ctx.redo = producer if producer is not None else ((x,), None)
        ctx.save_for_backward(a, b, h, *([keep] if keep is not None else []), *operands)
        ctx.scaling, ctx.p, ctx.projections, ctx.has_mask = scaling, p, projections, keep is not None
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102 - see the class
        a, b, h, *rest = ctx.saved_tensors
        keep, operands = (rest[0], rest[1:]) if ctx.has_mask else (None, rest)
        x = operands[0] if ctx.redo is None else ctx.redo(*operands)
        need_x, need_result, need_a, need_b = ctx.needs_input_grad[:4]
        ops = ctx.projections
        # h already carries the scaling s, so dB = gᵀh; g_h = s·(g B) scales a rank-r tensor.
        g_h, grad_b = ops.up_grads(grad.to(b.dtype), h, b, need_b)
        g_h = g_h * ctx.scaling
        xd = x.to(a.dtype)
        if keep is not None:
            # dA = g_hᵀ(keep ⊙ x)/(1-p) and dx = keep ⊙ (g_h A)/(1-p): the 1/(1-p) goes on the
            # rank-r g_h, so the input-sized work is one masked copy and one in-place mask.
            g_h = g_h.mul_(1.0 / (1.0 - ctx.p))
            xd = xd * keep
        grad_x, grad_a = ops.down_grads(g_h, xd, a, need_x, need_a)
        del xd, x
        if grad_x is not None:
            if keep is not None:
                grad_x.mul_(keep)
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad if need_result else None, grad_a, grad_b, None, None, None


def fused_lora(
    x: torch.Tensor,
    result: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
    p: float,
    projections: LinearProjections | ConvProjections,
) -> torch.Tensor:
    """``result + scaling · up(down(dropout_p(x), a), b)``, saving only x (or what made it), h and a mask."""
    return FusedLora.apply(x, result, a, b, scaling, p, projections)
