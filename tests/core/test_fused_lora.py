"""The fused LoRA autograd function gives the op-by-op path's output and gradients, and saves less.

The op-by-op path (``AdapterBehaviour.update``) is the oracle: the same layer, seed and
input are run with the fused function switched off.  Float32 outputs and gradients agree to
1e-6 relative (the scaling is applied to the rank-r projection, and the 1/(1-p) of dropout to
the rank-r gradient, instead of to input- or output-sized tensors: only rounding differs).  With dropout the same seed gives the same mask: the function draws it exactly as
``F.dropout`` does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.layers import AdapterBehaviour, AdapterLayer, ConvLora, LinearLora
from core.layers.behaviour import AdapterBehaviour as BaseBehaviour

RTOL_F32 = 1e-6  # float32: summation order only


def _layer(dtype: torch.dtype, dropout: float, conv1d: bool = False) -> AdapterLayer:
    torch.manual_seed(0)
    if conv1d == "conv2d":
        base = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    elif conv1d:
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(24, 16)  # GPT-2 layout: weight stored (in, out)
        nn.init.normal_(base.weight, std=0.2)
    else:
        base = nn.Linear(16, 24)
    base.to(dtype).requires_grad_(False)
    layer = ConvLora(base) if conv1d == "conv2d" else LinearLora(base)
    layer.add_adapter("a", r=4, alpha=8.0, dropout=dropout, init="default", use_rslora=False)
    layer.set_active("a")
    with torch.no_grad():  # B starts at zero; give it values so every gradient is exercised
        layer.lora_B["a"].weight.normal_()
    return layer


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Float32: 1e-6 relative to the largest value; bfloat16 outputs: one rounding apart."""
    tol = RTOL_F32 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * expected.abs().max().item())


def _run(layer: AdapterLayer, x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Output, gradients of x, A and B, and the RNG state after forward and backward."""
    if not fused:
        layer._fused_forward = lambda *args: None  # the op-by-op path
    try:
        for p in layer.parameters():
            p.grad = None
        x = x.detach().clone().requires_grad_(True)
        torch.manual_seed(1234)
        out = layer(x)
        weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (out.float() * weights).sum().backward()
        grads = {"x": x.grad, "A": layer.lora_A["a"].weight.grad, "B": layer.lora_B["a"].weight.grad}
        return out.detach(), grads, torch.get_rng_state()
    finally:
        layer.__dict__.pop("_fused_forward", None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["linear", "gpt2-conv1d", "conv2d"])
def test_fused_matches_op_by_op(dtype: torch.dtype, dropout: float, training: bool, kind: str) -> None:
    layer = _layer(dtype, dropout, {"linear": False, "gpt2-conv1d": True, "conv2d": "conv2d"}[kind])
    layer.train(training)
    x = torch.randn(*((3, 16, 7, 6) if kind == "conv2d" else (3, 5, 16))).to(dtype)
    out_f, grads_f, rng_f = _run(layer, x, fused=True)
    out_u, grads_u, rng_u = _run(layer, x, fused=False)
    _close(out_f, out_u, dtype)
    assert torch.equal(rng_f, rng_u)  # the same number of random draws as the op-by-op path
    for name in ("A", "B"):  # float32 factors over either base dtype
        torch.testing.assert_close(grads_f[name], grads_u[name], rtol=RTOL_F32, atol=RTOL_F32 * grads_u[name].abs().max())
    if dtype == torch.float32:
        torch.testing.assert_close(grads_f["x"], grads_u["x"], rtol=RTOL_F32, atol=RTOL_F32 * grads_u["x"].abs().max())
    else:  # the float32 adapter gradient is rounded to bfloat16 once: at most one ulp apart
        torch.testing.assert_close(grads_f["x"], grads_u["x"], rtol=2**-7, atol=2**-7 * grads_u["x"].abs().max().item())
    if training and dropout:
        _, grads_other_seed, _ = _run_with_seed(layer, x, 99)
        assert not torch.allclose(grads_other_seed["A"], grads_f["A"])  # the mask really depends on the seed


def _run_with_seed(layer: AdapterLayer, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    for p in layer.parameters():
        p.grad = None
    out = layer(x)
    out.float().sum().backward()
    return out, {"A": layer.lora_A["a"].weight.grad.clone()}, None


def _graph_saved_bytes(outputs: list[torch.Tensor], modules: list[nn.Module]) -> int:
    """Bytes autograd keeps for backward of ``outputs``: the tensors every node of the graph saved
    (``_saved_*``, or ``saved_tensors`` of a custom function), one count per storage, parameters
    left out.  Read from the graph: ``saved_tensors_hooks`` would change what the function keeps."""
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    storages: dict[int, int] = {}
    nodes: dict[int, object] = {}
    stack = [o.grad_fn for o in outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        for attr in dir(node):
            if not (attr.startswith("_saved_") or attr == "saved_tensors"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in params:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())


def _saved_bytes(fn, layers: list[AdapterLayer]) -> int:
    """Bytes saved for backward by the outputs of ``fn()``."""
    return _graph_saved_bytes(fn(), layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_three_projections_of_one_input_save_it_once(dtype: torch.dtype) -> None:
    """q, k and v with dropout keep the shared input once, small rank-r tensors and a byte-per-element
    mask each, no float copy of the input."""
    layers = [_layer(dtype, 0.1) for _ in range(3)]
    x = torch.randn(8, 64, 16).to(dtype).requires_grad_(True)
    saved = _saved_bytes(lambda: [layer(x) for layer in layers], layers)
    input_bytes = x.numel() * x.element_size()
    rank_r = 3 * 8 * 64 * 4 * 4  # h = A x, float32, per layer
    masks = 3 * x.numel()  # bool
    assert saved <= input_bytes + rank_r + masks
    for layer in layers:
        layer._fused_forward = lambda *args: None
    assert _saved_bytes(lambda: [layer(x) for layer in layers], layers) > 3 * input_bytes  # the op-by-op path


def test_variants_that_change_the_update_keep_their_own_path() -> None:
    class Doubled(AdapterBehaviour):
        def update(self, layer, adapter, x):
            return 2 * super().update(layer, adapter, x)

    assert BaseBehaviour().fusable
    assert not Doubled().fusable
    torch.manual_seed(0)
    layer = LinearLora(nn.Linear(16, 24).requires_grad_(False))
    layer.add_adapter("a", r=4, alpha=8.0, dropout=0.0, init="default", use_rslora=False, behaviour=Doubled())
    layer.set_active("a")
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_()
    x = torch.randn(2, 16)
    expected = layer.base_layer(x) + 2 * (x @ layer.lora_A["a"].weight.t() @ layer.lora_B["a"].weight.t()) * 2.0
    torch.testing.assert_close(layer(x), expected)


def test_conv_padding_modes_the_function_does_not_cover_keep_the_op_by_op_path() -> None:
    torch.manual_seed(0)
    layer = ConvLora(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect").requires_grad_(False))
    layer.add_adapter("a", r=2, alpha=2.0, dropout=0.0, init="default", use_rslora=False)
    layer.set_active("a")
    x = torch.randn(1, 4, 5, 5)
    assert layer._fused_forward("a", x, layer.base_layer(x)) is None
    assert layer(x).shape == (1, 6, 5, 5)


def test_under_saved_tensor_hooks_the_input_itself_is_kept() -> None:
    """Activation checkpointing (non-reentrant) and save_on_cpu work through saved_tensors_hooks:
    reading GELU's saved input there would unpack it, so the function keeps x instead."""
    from core.layers.fused_lora import _producer

    u = torch.randn(4, 8, requires_grad=True)
    x = torch.nn.functional.gelu(u)
    assert _producer(x) is not None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert _producer(x) is None
    layer = _layer(torch.float32, 0.0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        out = layer(torch.nn.functional.gelu(torch.randn(2, 16, requires_grad=True)))
    out.sum().backward()
    assert layer.lora_A["a"].weight.grad is not None


def test_autocast_keeps_the_op_by_op_path() -> None:
    layer = _layer(torch.float32, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._fused_forward("a", torch.randn(2, 16), torch.randn(2, 24)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["gelu", "gelu-tanh", "gpt2-new-gelu"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_input_made_by_an_activation_is_redone_not_saved(dtype: torch.dtype, activation: str, dropout: float) -> None:
    """An MLP's second projection reads gelu(u): the function keeps u (kept by GELU anyway), not the
    4×-wide activation, and redoes GELU in backward -- same gradients, and the activation is saved by nobody."""
    from transformers.activations import NewGELUActivation

    act = {"gelu": nn.GELU(), "gelu-tanh": nn.GELU(approximate="tanh"), "gpt2-new-gelu": NewGELUActivation()}[activation]
    layer = _layer(dtype, dropout)
    layer.train()
    up = nn.Linear(8, 16).to(dtype).requires_grad_(False)
    x0 = torch.randn(16, 32, 8).to(dtype)

    def run(fused: bool):
        if not fused:
            layer._fused_forward = lambda *args: None
        try:
            for p in layer.parameters():
                p.grad = None
            x = x0.clone().requires_grad_(True)
            torch.manual_seed(7)
            out = layer(act(up(x)))
            saved = _graph_saved_bytes([out], [layer, up])
            (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            grads = (x.grad, layer.lora_A["a"].weight.grad, layer.lora_B["a"].weight.grad)
            return out.detach(), grads, saved
        finally:
            layer.__dict__.pop("_fused_forward", None)

    out_f, grads_f, saved_f = run(True)
    out_u, grads_u, saved_u = run(False)
    _close(out_f, out_u, dtype)
    for name, gf, gu in zip(("x", "A", "B"), grads_f, grads_u):
        tol = RTOL_F32 if (dtype == torch.float32 or name != "x") else 2**-7
        torch.testing.assert_close(gf, gu, rtol=tol, atol=tol * gu.abs().max().item(), msg=name)
    activation_bytes = 16 * 32 * 16 * x0.element_size()
    assert saved_f <= saved_u - activation_bytes  # the activation (and with dropout its copies) is gone


def test_non_reentrant_checkpoint_gives_the_same_gradients() -> None:
    """The engine enables transformers' gradient checkpointing with use_reentrant=False."""
    from torch.utils.checkpoint import checkpoint

    layer = _layer(torch.float32, 0.0)
    up = nn.Linear(8, 16).requires_grad_(False)
    x = torch.randn(4, 8)

    def grads(checkpointed: bool) -> torch.Tensor:
        layer.lora_A["a"].weight.grad = None
        block = lambda t: layer(torch.nn.functional.gelu(up(t)))  # noqa: E731
        out = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
        out.square().sum().backward()
        return layer.lora_A["a"].weight.grad.clone()

    torch.testing.assert_close(grads(True), grads(False), rtol=RTOL_F32, atol=0)
