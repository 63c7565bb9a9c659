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

When ``x`` can be rebuilt from tensors autograd already keeps for other nodes' backward, the
function keeps those instead of ``x`` and rebuilds it in backward (``_producer``); ``x`` is
then saved by nobody, as in the frozen model, which keeps no input of a frozen linear layer
at all.  ``x`` may be, directly or through ops that only move data (view, reshape,
transpose, permute, a contiguous copy -- replayed, they give the same bits):

* the result of an op redone from the operands it keeps: ``gelu(u)`` keeps ``u`` (the
  4×-wide MLP activation), GPT-2's ``0.5·u · (1 + tanh(…))`` keeps both factors, eager
  attention's ``probs @ values`` (bmm) keeps both -- the same kernel on the same values gives
  the same bits; a float32/float64 layer norm keeps its input, mean and 1/std (the input of
  q/k/v and of the MLP) -- redone by the CPU kernel's formula, the same bits there;
* a tensor another node keeps anyway -- SDPA's output, a softmax/tanh/sigmoid/ReLU result --
  when a copy comes in between (a plain view of it shares its storage and is kept as is).

Anything else on the way (slicing, expand, an in-place change, other ops) keeps ``x``.  Under
``saved_tensors_hooks`` (non-reentrant activation checkpointing, ``save_on_cpu``) reading
another node's saved tensor would unpack it, so there ``x`` is kept as is.

The mask could be redrawn in backward from a saved RNG state instead (as
``torch.utils.checkpoint`` does with ``preserve_rng_state``); on a CPU the Bernoulli draw
costs far more than the byte per element, so it is kept.  One custom autograd function per
LoRA projection that saves the shared input once is the idea of Unsloth's
``LoRA_QKV``/``LoRA_MLP`` (``unsloth/kernels/fast_lora.py``), here without dropping dropout.
The scaling s is applied to the rank-r h rather than to the output (one output-sized pass
fewer), so results equal the op-by-op path's up to rounding (float32: 1e-6 relative;
tests/core/test_fused_lora.py).

At dropout 0 over a frozen float32 ``nn.Linear`` or GPT-2 ``Conv1D`` (``LinearLora._folded_forward``
says exactly when), :class:`FoldedLora` folds the update into the weight instead and computes
the base output itself: ``y = x (W + s·B A)ᵀ + bias`` and ``dx = g (W + s·B A)``, the
weight-sized sum made in forward and again in backward, never kept.  That removes the
``h Bᵀ`` product and the output-sized add in forward, and the ``g_h A`` product and the
input-sized add in backward; ``h = s·A x`` is still computed and kept (rank r) for dB, and
``x`` kept or rebuilt as above for dA.  The folded weight rounds once more: float32 only,
where that stays within 1e-6 relative.  On the 2-core CPU of bench_training_step.py
(``--quick --nofold``) it took 3-5 % off BERT's and GPT-2's step.
"""

from __future__ import annotations

import functools
import math
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


def _layer_norm(
    u: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """Layer norm of ``u`` from the statistics its forward saved (its ``eps`` is not in the graph,
    the statistics are).  The CPU kernel's formula: ``(u - mean)·rstd`` then one fused multiply-add
    with weight and bias (``addcmul``) -- the same bits there in float32 and float64; on other
    devices the kernel may round differently, by at most one rounding (tests/core/test_fused_lora.py)."""
    centred = u - mean
    if weight is None:
        return centred.mul_(rstd) if bias is None else torch.addcmul(bias, centred, rstd)
    normed = centred.mul_(rstd)  # in place on the fresh difference: the same rounding, one tensor fewer
    return normed.mul_(weight) if bias is None else torch.addcmul(bias, normed, weight)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


# Ops that only move data.  Replayed with the same logical arguments on the tensor they started
# from, they give x's values bit for bit (a view's strides may differ, its values cannot).
_RESHAPES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})
_MAX_SHAPE_OPS = 16
# Nodes that keep their own output for their backward, and the attribute that holds it.
_KEEP_OUTPUT = {"SoftmaxBackward0": "_saved_result", "TanhBackward0": "_saved_result",
                "SigmoidBackward0": "_saved_result", "ReluBackward0": "_saved_result"}  # fmt: skip


def _signed(dim: int) -> int:
    # Autograd hands a negative dimension saved by transpose back as its unsigned 64-bit pattern.
    return dim - 2**64 if dim >= 2**63 else dim


def _shape_ops(x: torch.Tensor) -> tuple[object, int, tuple[int, ...], list[tuple], bool] | None:
    """Walk from ``x`` back through ops that only move data (view, reshape, transpose, permute,
    clone/contiguous) to the node whose output they started from.

    Returns that node, which of its outputs, that output's shape, the ops to replay on it (first
    to last, as ``(name, argument)``) and whether one of them copies; None at anything else on
    the way (slicing, expand, an in-place change, a leaf, a chain longer than 16).
    """
    node, output_nr, shape = x.grad_fn, x.output_nr, tuple(x.shape)
    ops: list[tuple] = []
    copies = False
    for _ in range(_MAX_SHAPE_OPS):
        name = type(node).__name__
        if name in _RESHAPES:
            before = tuple(node._saved_self_sym_sizes)
            if math.prod(before) != math.prod(shape):
                return None
            ops.append(("reshape", shape))
        elif name == "TransposeBackward0":
            d0, d1 = (_signed(d) % len(shape) for d in (node._saved_dim0, node._saved_dim1))
            swapped = list(shape)
            swapped[d0], swapped[d1] = shape[d1], shape[d0]
            before = tuple(swapped)
            ops.append(("transpose", (d0, d1)))
        elif name == "PermuteBackward0":
            dims = tuple(_signed(d) % len(shape) for d in node._saved_dims)
            if sorted(dims) != list(range(len(shape))):
                return None
            unpermuted = [0] * len(shape)
            for i, d in enumerate(dims):
                unpermuted[d] = shape[i]
            before = tuple(unpermuted)
            ops.append(("permute", dims))
        elif name == "CloneBackward0":
            before, copies = shape, True
            ops.append(("clone", None))
        else:
            ops.reverse()
            return node, output_nr, shape, ops, copies
        if len(node.next_functions) != 1 or node.next_functions[0][0] is None:
            return None  # an input that needs no gradient: nothing in the graph made it
        (node, output_nr), shape = node.next_functions[0], before
    return None


def _replay(ops: list[tuple], t: torch.Tensor) -> torch.Tensor:
    for name, arg in ops:
        if name == "reshape":
            t = t.reshape(arg)
        elif name == "transpose":
            t = t.transpose(*arg)
        elif name == "permute":
            t = t.permute(arg)
        else:  # clone: its memory format is not in the graph; .contiguous() is the usual one, and
            # only the values matter here (a following reshape is then a view, not another copy)
            t = t.clone(memory_format=torch.contiguous_format)
    return t


class _Chain:
    """Redo the op that made the data, then replay the shape ops on its result."""

    def __init__(self, redo: Callable[..., torch.Tensor], ops: list[tuple]):
        self.redo, self.ops = redo, ops

    def __call__(self, *operands: torch.Tensor) -> torch.Tensor:
        return _replay(self.ops, self.redo(*operands))


def _made_by(node, output_nr: int, shape: tuple[int, ...], dtype: torch.dtype):
    """(operands autograd keeps for ``node``, how to redo its output from them, whether that output
    is itself what is kept), or None for a node not understood here or an operand not kept.

    ``shape``/``dtype``: those of the output the shape ops started from; an operand of another
    dtype, or one that broadcasts, gives None (keep x itself rather than reason about it).
    """
    name = type(node).__name__
    if output_nr != 0:
        return None
    output_kept = False
    if name == "GeluBackward0":
        approximate = node._saved_approximate
        if approximate not in ("none", "tanh"):
            return None
        operands, redo = (node._saved_self,), (F.gelu if approximate == "none" else _gelu_tanh)
        made = operands[0].shape if torch.is_tensor(operands[0]) else None
    elif name == "MulBackward0":
        operands, redo = (node._saved_self, node._saved_other), torch.mul
        made = operands[0].shape if all(torch.is_tensor(t) and t.shape == shape for t in operands) else None
    elif name == "BmmBackward0":
        # Eager attention's probabilities · values: both kept by bmm for its own backward.
        operands, redo = (node._saved_self, node._saved_mat2), torch.bmm
        first, second = operands
        made = None
        if all(torch.is_tensor(t) and t.dim() == 3 for t in operands) and first.shape[2] == second.shape[1]:
            made = (first.shape[0], first.shape[1], second.shape[2])
    elif name == "NativeLayerNormBackward0":
        operands, redo = (node._saved_input, node._saved_result1, node._saved_result2, node._saved_weight,
                          node._saved_bias), _layer_norm  # fmt: skip
        u, mean, rstd = operands[:3]
        made = None
        # The statistics are kept in the input's dtype (bfloat16 for a bfloat16 input): rounded
        # like that, they do not give the output back to within float rounding.
        if dtype in (torch.float32, torch.float64) and all(torch.is_tensor(t) for t in (u, mean, rstd)):
            if torch.broadcast_shapes(mean.shape, rstd.shape, u.shape) == u.shape:
                made = u.shape
    elif name in _KEEP_OUTPUT or (name.startswith("ScaledDotProduct") and hasattr(node, "_saved_output")):
        # SDPA's attention output is kept by every backend; a softmax, tanh, sigmoid or ReLU keeps
        # its result.  Unpacked, the saved output is the output itself (the same storage).
        operands, redo, output_kept = (getattr(node, _KEEP_OUTPUT.get(name, "_saved_output")),), _identity, True
        made = operands[0].shape if torch.is_tensor(operands[0]) else None
    else:
        return None
    if made is None or tuple(made) != shape:
        return None
    if any(t is not None and (not torch.is_tensor(t) or t.dtype != dtype) for t in operands):
        return None
    return operands, redo, output_kept


def _producer(x: torch.Tensor) -> tuple[tuple[torch.Tensor | None, ...], Callable[..., torch.Tensor]] | None:
    """The tensors autograd already keeps from which ``x`` can be rebuilt exactly, and how; None
    where there are none (then x itself is kept).

    ``x`` may come, through ops that only move data (view, reshape, transpose, permute, a
    contiguous copy), from: an op redone from the operands it keeps (GELU, a product of two
    kept factors, layer norm from its input and statistics), or a tensor another node keeps
    anyway (SDPA's output, a softmax / tanh / sigmoid / ReLU result) -- the latter only through a
    copy, since a view of a kept tensor shares its storage and costs nothing to keep.
    """
    if x.grad_fn is None or _saved_tensor_hooks_active():
        return None
    try:
        chain = _shape_ops(x)
        if chain is None:
            return None
        node, output_nr, shape, ops, copies = chain
        made = _made_by(node, output_nr, shape, x.dtype)
    except RuntimeError:  # a tensor autograd did not keep, or already released
        return None
    if made is None:
        return None
    operands, redo, output_kept = made
    if output_kept and not copies:
        return None  # x is a view of what that node keeps: keeping x costs nothing more
    return operands, (_Chain(redo, ops) if ops else redo)


def keeps_less_than_op_by_op(x: torch.Tensor, factor_dtype: torch.dtype, p: float) -> bool:
    """True when the fused function keeps less for backward than the op-by-op path would: with dropout
    (one byte per element instead of a float copy), over a base of another dtype (x as it is instead of
    a cast copy), or when x can be rebuilt from what other nodes keep.  Otherwise both keep x's storage
    (shared with whoever else keeps it) and the rank-r h, and the op-by-op path is cheaper to run: a
    custom function's Python costs about 0.4 ms per layer and step, 4-8 % of a small ResNet's step."""
    return p > 0 or x.dtype != factor_dtype or _producer(x) is not None


def _dropout_with_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.dropout(x, p, training=True)``, with the same random draws, and its mask.

    Where ``F.dropout`` runs the fused kernel (CUDA, XPU) that kernel is called and returns the
    mask itself; elsewhere (CPU) this is ATen's ``_dropout_impl`` -- a Bernoulli draw in x's
    dtype, divided by 1-p, times x -- with the division and the product as one pass:
    ``0 + c·x·draw``, c = 1/(1-p) rounded as the division rounds it, gives ``x · (draw/(1-p))``
    value for value (a dropped element may be +0 where F.dropout gives -0).
    """
    if x.is_cuda or x.is_xpu:
        return torch.native_dropout(x, p, True)
    noise = torch.empty_like(x).bernoulli_(1 - p)
    return torch.addcmul(x.new_zeros(()), x, noise, value=_inverse_keep(x.dtype, p)), noise.bool()


@functools.lru_cache(maxsize=64)
def _inverse_keep(dtype: torch.dtype, p: float) -> float:
    """1/(1-p) rounded as ``draw.div_(1 - p)`` rounds it in ``dtype``."""
    return torch.ones((), dtype=dtype).div_(1 - p).item()


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
        mask = None
        if keep is not None:
            # dA = g_hᵀ(keep ⊙ x)/(1-p) and dx = keep ⊙ (g_h A)/(1-p): the 1/(1-p) goes on the
            # rank-r g_h, so the input-sized work is one mask expansion and two multiplies.  The
            # mask is expanded once, from its bytes read as uint8: on a CPU, bool -> float is a
            # scalar loop (multiplying by a bool tensor makes that copy each time, 5x the cost of
            # a float multiply), uint8 -> float a vectorised one.
            g_h = g_h.mul_(1.0 / (1.0 - ctx.p))
            mask = (keep.view(torch.uint8) if keep.dtype == torch.bool else keep).to(xd.dtype)
            # A freshly rebuilt x (or a new cast) is nobody else's: masked in place.
            xd = xd.mul_(mask) if (ctx.redo is not None or xd is not x) else xd * mask
        grad_x, grad_a = ops.down_grads(g_h, xd, a, need_x, need_a)
        del xd, x
        if grad_x is not None:
            if mask is not None:
                grad_x.mul_(mask)
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


def _folded(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, transposed: bool) -> torch.Tensor:
    """W + s·B A as an (out, in) tensor; summed in the layout the weight is stored in (GPT-2's Conv1D
    stores (in, out)), so that the weight-sized pass reads it in order."""
    if transposed:
        return torch.addmm(weight, a.t(), b.t(), alpha=scaling).t()
    return torch.addmm(weight, b, a, alpha=scaling)


class FoldedLora(torch.autograd.Function):
    """``x (W + s·B A)ᵀ + bias`` for a frozen float32 linear layer at dropout 0: the update folded into
    the weight for the two large products (output and input gradient), the weight-sized sum redone
    in backward rather than kept.  h = s·A x is still computed (and kept, rank r) for dB."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float, transposed: bool):  # noqa: D102 - see the class
        h = F.linear(x, a).mul_(scaling)
        out = F.linear(x, _folded(weight, a, b, scaling, transposed), bias)
        producer = _producer(x)
        operands, ctx.redo = producer if producer is not None else ((x,), None)
        ctx.save_for_backward(weight, a, b, h, *operands)
        ctx.scaling, ctx.transposed = scaling, transposed
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102 - see the class
        weight, a, b, h, *operands = ctx.saved_tensors
        need_x, _, _, need_a, need_b = ctx.needs_input_grad[:5]
        grad_x = grad_a = grad_b = None
        if need_x:
            grad_x = grad.matmul(_folded(weight, a, b, ctx.scaling, ctx.transposed))
        g2 = grad.reshape(-1, grad.shape[-1])
        if need_b:
            grad_b = g2.t().mm(h.reshape(-1, h.shape[-1]))
        if need_a:
            x = operands[0] if ctx.redo is None else ctx.redo(*operands)
            g_h = g2.mm(b).mul_(ctx.scaling)
            grad_a = g_h.t().mm(x.reshape(-1, x.shape[-1]))
        return grad_x, None, None, grad_a, grad_b, None, None


def folded_lora(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
    transposed: bool,
) -> torch.Tensor:
    """``x (W + scaling · B A)ᵀ + bias`` with W = ``weight`` (stored (in, out) when ``transposed``, as
    GPT-2's Conv1D does), frozen; saving x (or what made it) and h."""
    return FoldedLora.apply(x, weight, bias, a, b, scaling, transposed)
