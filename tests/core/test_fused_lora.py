"""The fused LoRA autograd function gives the op-by-op path's output and gradients, and saves less.

The op-by-op path (``AdapterBehaviour.update``) is the oracle: the same layer, seed and
input are run with the fused function switched off.  Float32 outputs and gradients agree to
1e-6 relative (the scaling is applied to the rank-r projection, and the 1/(1-p) of dropout to
the rank-r gradient, instead of to input- or output-sized tensors: only rounding differs).  With dropout the same seed gives the same mask: the function draws it exactly as
``F.dropout`` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lora_studio.core.layers import AdapterBehaviour, AdapterLayer, ConvLora, LinearLora
from lora_studio.core.layers.behaviour import AdapterBehaviour as BaseBehaviour

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
        layer.limit_fast_paths("none")  # the op-by-op path
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
        layer.limit_fast_paths("folded")  # the class\'s own paths again


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


def _saved_by_graph(outputs: list[torch.Tensor], modules: list[nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor autograd keeps for backward of ``outputs``, with the type of the node that keeps it:
    what every node saved (``_saved_*``, or ``saved_tensors`` of a custom function), parameters left
    out.  Read from the graph: ``saved_tensors_hooks`` would change what the function keeps."""
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
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
                    yield type(node).__name__, t
        stack.extend(fn for fn, _ in node.next_functions)


def _graph_saved_bytes(outputs: list[torch.Tensor], modules: list[nn.Module]) -> int:
    """Bytes autograd keeps for backward of ``outputs``, one count per storage."""
    saved = _saved_by_graph(outputs, modules)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for _, t in saved}
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
        layer.limit_fast_paths("none")
    assert _saved_bytes(lambda: [layer(x) for layer in layers], layers) > 3 * input_bytes  # the op-by-op path


def test_variants_that_change_the_update_keep_their_own_path() -> None:
    with pytest.raises(TypeError, match="overrides update: declare forward_path = 'own'"):
        class Undeclared(AdapterBehaviour):
            def update(self, layer, adapter, x):
                return 2 * super().update(layer, adapter, x)

    class Doubled(AdapterBehaviour):
        forward_path = "own"

        def update(self, layer, adapter, x):
            return 2 * super().update(layer, adapter, x)

    assert BaseBehaviour().forward_path == "standard"
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
    assert layer.fused_forward("a", x, layer.base_layer(x)) is None
    assert layer(x).shape == (1, 6, 5, 5)


def test_under_saved_tensor_hooks_the_input_itself_is_kept() -> None:
    """Activation checkpointing (non-reentrant) and save_on_cpu work through saved_tensors_hooks:
    reading GELU's saved input there would unpack it, so the function keeps x instead."""
    from lora_studio.core.layers.fused_lora import _producer

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
        assert layer.fused_forward("a", torch.randn(2, 16), torch.randn(2, 24)) is None


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
            layer.limit_fast_paths("none")
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
            layer.limit_fast_paths("folded")  # the class\'s own paths again

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


# -- inputs rebuilt from what other nodes keep: layer norm, shape ops, attention ------------------


def _storages(outputs: list[torch.Tensor], modules: list[nn.Module]) -> dict[int, set[str]]:
    """Storage (data pointer) -> the node types that saved it, for every tensor saved for backward
    of ``outputs`` (parameters left out)."""
    owners: dict[int, set[str]] = {}
    for name, t in _saved_by_graph(outputs, modules):
        owners.setdefault(t.untyped_storage().data_ptr(), set()).add(name)
    return owners


def _layer_norm_node(shape, normalized, weight: bool, bias: bool, dtype: torch.dtype):
    torch.manual_seed(3)
    u = (torch.randn(*shape, dtype=dtype) * 3 + 1).requires_grad_(True)
    w = torch.randn(normalized, dtype=dtype) if weight else None
    b = torch.randn(normalized, dtype=dtype) if bias else None
    return u, torch.nn.functional.layer_norm(u, normalized, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "bias", "none"])
@pytest.mark.parametrize(("shape", "normalized"), [((16, 128, 512), (512,)), ((3, 5, 7), (7,)), ((4, 6, 10), (6, 10))])
def test_layer_norm_is_redone_from_its_saved_input_and_statistics(dtype, affine, shape, normalized) -> None:
    """The layer norm's input, mean and 1/std (kept by its node) give its output back: bit for bit
    with this CPU kernel (measured on AVX-512), and in any case within one rounding of the largest
    value -- which is what the test holds it to, so that it does not depend on the CPU."""
    from lora_studio.core.layers.fused_lora import _producer

    u, x = _layer_norm_node(shape, normalized, "weight" in affine, "bias" in affine, dtype)
    producer = _producer(x)
    assert producer is not None
    operands, redo = producer
    assert operands[0].untyped_storage().data_ptr() == u.untyped_storage().data_ptr()  # kept by the LN node anyway
    rebuilt = redo(*operands)
    ulp = torch.finfo(dtype).eps * x.detach().abs().max().item()
    assert (rebuilt - x.detach()).abs().max().item() <= ulp


def test_layer_norm_over_bfloat16_keeps_x() -> None:
    """bfloat16 statistics are rounded to bfloat16: the output cannot be redone from them exactly."""
    from lora_studio.core.layers.fused_lora import _producer

    _, x = _layer_norm_node((4, 8, 32), (32,), True, True, torch.bfloat16)
    assert _producer(x) is None


def _sdpa_output(batch=2, heads=4, seq=8, dim=8, layout="transformers") -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA over q, k, v laid out as transformers makes them -- (batch, seq, heads·dim) split and
    transposed, for which the CPU kernel returns its output laid out (batch, seq, heads, dim) -- or,
    ``layout="heads-first"``, as contiguous (batch, heads, seq, dim), for which merging the heads copies."""
    torch.manual_seed(5)
    if layout == "transformers":
        hidden = torch.randn(batch, seq, 3 * heads * dim, requires_grad=True)
        q, k, v = (t.view(batch, seq, heads, dim).transpose(1, 2) for t in hidden.split(heads * dim, dim=-1))
    else:
        hidden = torch.randn(3, batch, heads, seq, dim, requires_grad=True)
        q, k, v = hidden.unbind(0)
    return hidden, torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _eager_attention(batch=2, heads=4, seq=8, dim=8) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention: softmax(q kᵀ) v through matmul (bmm inside)."""
    torch.manual_seed(5)
    qkv = torch.randn(batch, heads, seq, 3 * dim, requires_grad=True)
    q, k, v = qkv.split(dim, dim=-1)
    probs = torch.softmax(q @ k.transpose(-1, -2) / dim**0.5, dim=-1)
    return qkv, probs @ v


def _merged_heads(o: torch.Tensor, how: str) -> torch.Tensor:
    batch, heads, seq, dim = o.shape
    if how == "transpose-reshape":  # transformers' sdpa path
        return o.transpose(1, 2).contiguous().reshape(batch, seq, heads * dim)
    if how == "transpose-clone-reshape":  # a real copy, whatever the layout of o
        return o.transpose(1, 2).clone().reshape(batch, seq, heads * dim)
    return o.permute(0, 2, 1, 3).contiguous(memory_format=torch.contiguous_format).view(batch, seq, heads * dim)


@pytest.mark.parametrize(
    ("make", "attention", "how"),
    [
        ("layer-norm", None, None),
        ("layer-norm-view", None, None),
        ("attention", "sdpa", "transpose-clone-reshape"),
        ("attention", "sdpa-heads-first", "transpose-reshape"),
        ("attention", "eager", "transpose-reshape"),
        ("attention", "eager", "permute-view"),
        ("softmax-transpose-contiguous", None, None),
        ("gelu-transpose-contiguous", None, None),
    ],
)
def test_producer_rebuilds_x_bit_for_bit_through_shape_ops(make, attention, how) -> None:
    from lora_studio.core.layers.fused_lora import _producer

    if make.startswith("layer-norm"):
        _, x = _layer_norm_node((4, 6, 16), (16,), True, True, torch.float32)
        x = x.view(24, 16) if make == "layer-norm-view" else x
    elif make == "attention":
        if attention == "eager":
            _, o = _eager_attention()
        else:
            _, o = _sdpa_output(layout="heads-first" if attention.endswith("heads-first") else "transformers")
        x = _merged_heads(o, how)
    else:
        u = torch.randn(4, 6, 16, requires_grad=True)
        made = torch.softmax(u, -1) if make.startswith("softmax") else torch.nn.functional.gelu(u)
        x = made.transpose(0, 1).contiguous()
    producer = _producer(x)
    assert producer is not None
    operands, redo = producer
    rebuilt = redo(*operands)
    if make.startswith("layer-norm"):
        assert (rebuilt - x).abs().max().item() <= torch.finfo(x.dtype).eps * x.abs().max().item()
    else:
        assert torch.equal(rebuilt, x)
    assert rebuilt.shape == x.shape
    x_storage = x.untyped_storage().data_ptr()
    assert all(t is None or t.untyped_storage().data_ptr() != x_storage for t in operands)


def test_sdpa_output_merged_by_views_is_already_kept_by_sdpa() -> None:
    """On the CPU (and CUDA) kernels SDPA's output is laid out (batch, seq, heads, dim): the merged
    heads are a view of the output SDPA keeps, so keeping x costs nothing and nothing is replayed."""
    from lora_studio.core.layers.fused_lora import _producer

    _, o = _sdpa_output()
    x = _merged_heads(o, "transpose-reshape")
    assert x.untyped_storage().data_ptr() == o.grad_fn._saved_output.untyped_storage().data_ptr()
    assert _producer(x) is None


@pytest.mark.parametrize("change", ["slice", "expand", "in-place", "leaf-view", "no-grad-input", "hooks"])
def test_producer_is_conservative(change: str) -> None:
    """Anything not understood keeps x itself."""
    from lora_studio.core.layers.fused_lora import _producer

    _, ln = _layer_norm_node((4, 6, 16), (16,), True, True, torch.float32)
    if change == "slice":
        x = ln[..., :8]
    elif change == "expand":
        x = ln[:, :1].expand(4, 6, 16)
    elif change == "in-place":
        x = ln.clone().view(24, 16)
        x.add_(1.0)
    elif change == "leaf-view":
        x = torch.randn(4, 6, 16, requires_grad=True).transpose(0, 1).contiguous()
    elif change == "no-grad-input":
        x = torch.nn.functional.layer_norm(torch.randn(4, 16), (16,))
    else:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            assert _producer(ln.transpose(0, 1).contiguous()) is None
        return
    assert _producer(x) is None


def _gradients_agree(fused: tuple, unfused: tuple, names: tuple[str, ...]) -> None:
    for name, gf, gu in zip(names, fused, unfused):
        torch.testing.assert_close(gf, gu, rtol=RTOL_F32, atol=RTOL_F32 * gu.abs().max().item(), msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(
    "make", ["layer-norm", "sdpa-transpose-reshape", "sdpa-heads-first-transpose-reshape", "sdpa-transpose-clone",
             "eager-attention"])  # fmt: skip
def test_rebuilt_input_gives_the_op_by_op_gradients(make: str, dropout: float) -> None:
    """LayerNorm -> Linear and SDPA/eager attention -> merged heads -> Linear: output and the
    gradients of the input, A and B equal the op-by-op path's (1e-6 relative), and the input of
    the adapted layer is no longer among the saved storages where it is a storage of its own."""
    layer = _layer(torch.float32, dropout)
    layer.train()
    batch, heads, seq, dim = 2, 4, 8, 4  # heads·dim = 16, the layer's input width

    def run(fused: bool):
        if not fused:
            layer.limit_fast_paths("none")
        try:
            for p in layer.parameters():
                p.grad = None
            if make == "layer-norm":
                u, x = _layer_norm_node((batch, seq, 16), (16,), True, True, torch.float32)
            else:
                if make == "eager-attention":
                    u, o = _eager_attention(batch, heads, seq, dim)
                else:
                    layout = "heads-first" if "heads-first" in make else "transformers"
                    u, o = _sdpa_output(batch, heads, seq, dim, layout=layout)
                x = _merged_heads(o, "transpose-clone-reshape" if make.endswith("clone") else "transpose-reshape")
            torch.manual_seed(11)
            out = layer(x)
            owners = _storages([out], [layer])
            kept_x = owners.get(x.untyped_storage().data_ptr(), set())
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            return out.detach(), (u.grad, layer.lora_A["a"].weight.grad, layer.lora_B["a"].weight.grad), kept_x
        finally:
            layer.limit_fast_paths("folded")  # the class\'s own paths again

    out_f, grads_f, kept_f = run(True)
    out_u, grads_u, kept_u = run(False)
    _close(out_f, out_u, torch.float32)
    _gradients_agree(grads_f, grads_u, ("input", "A", "B"))
    if make == "sdpa-transpose-reshape":  # a view of SDPA's kept output: keeping it costs nothing
        assert kept_f - {"FusedLoraBackward", "FoldedLoraBackward"} == {"ScaledDotProductFlashAttentionForCpuBackward0"}
        return
    if not dropout:  # the op-by-op path keeps x (with dropout: the dropped copy and its mask instead)
        assert kept_u
    assert not kept_f  # the fused path rebuilds it: nobody keeps x's storage


def _tiny_transformer(kind: str, attention: str, dropout: float):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    from lora_studio.core import LoraConfig, attach

    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, attn_implementation=attention)  # fmt: skip
        model, targets = BertModel(config, add_pooling_layer=False), ["query", "key", "value", "dense"]
    else:
        config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attention)  # fmt: skip
        model, targets = GPT2Model(config), ["c_attn", "c_proj", "c_fc"]
    attach(model, LoraConfig(r=4, alpha=8, dropout=dropout, targets=targets))
    with torch.no_grad():  # B starts at zero, layer norms at 1 and 0: give them values that show up
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model.train()


def _adapted_inputs(model: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], list]:
    """Forward pre-hooks recording the input of every adapted layer."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0])))
               for name, m in model.named_modules() if isinstance(m, AdapterLayer)]  # fmt: skip
    return seen, handles


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_tiny_transformers_match_op_by_op_and_keep_no_layer_norm_or_merged_attention_output(
    kind: str, attention: str, dropout: float
) -> None:
    """Tiny BERT and GPT-2 (hidden 32, 2 layers): output and the gradients of the input embeddings
    and of every A and B equal the op-by-op path's (1e-6 relative).  And the storages the fused
    path keeps no longer include a layer-norm output (input of q/k/v, GPT-2's c_attn, the MLP's
    first projection) nor the merged attention output (input of the attention output projection),
    except where SDPA keeps that one anyway; the op-by-op path keeps them all."""
    model = _tiny_transformer(kind, attention, dropout)
    torch.manual_seed(1)
    embeds = torch.randn(2, 8, 32)

    def run(fused: bool):
        layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
        if not fused:
            for m in layers:
                m.limit_fast_paths("none")
        try:
            model.zero_grad(set_to_none=True)
            x = embeds.clone().requires_grad_(True)
            seen, handles = _adapted_inputs(model)
            torch.manual_seed(7)
            out = model(inputs_embeds=x).last_hidden_state
            for h in handles:
                h.remove()
            owners = _storages([out], [model])
            kept = {name: owners.get(t.untyped_storage().data_ptr(), set()) for name, t in seen
                    if t.grad_fn is not None}  # fmt: skip
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            grads = {"inputs_embeds": x.grad}
            grads.update({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
            return out.detach(), grads, kept
        finally:
            for m in layers:
                m.limit_fast_paths("folded")  # the class\'s own paths again

    out_f, grads_f, kept_f = run(True)
    out_u, grads_u, kept_u = run(False)
    _close(out_f, out_u, torch.float32)
    assert grads_f.keys() == grads_u.keys() and len(grads_f) > 1
    _gradients_agree(tuple(grads_f.values()), tuple(grads_u.values()), tuple(grads_f))
    layer_norm_fed = ("query", "key", "value", "intermediate.dense") if kind == "bert" else ("c_attn", "c_fc")
    attention_out = "attention.output.dense" if kind == "bert" else "attn.c_proj"
    checked = [name for name in kept_f if name.endswith(layer_norm_fed) or name.endswith(attention_out)]
    assert len(checked) >= 5  # every layer but the first's q/k/v (or c_attn), whose input needs no gradient
    for name in checked:
        if not dropout:  # the op-by-op path keeps every one of them (with dropout: the dropped copies)
            assert kept_u[name], name
        if attention == "sdpa" and name.endswith(attention_out):  # a view of the output SDPA keeps
            assert "ScaledDotProductFlashAttentionForCpuBackward0" in kept_f[name], (name, kept_f[name])
        else:
            assert not kept_f[name], (name, kept_f[name])



# -- the update folded into the weight (float32, dropout 0) ----------------------------------------


def _function_of(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__ if out.grad_fn is not None else "none"


@pytest.mark.parametrize("kind", ["linear", "gpt2-conv1d"])
@pytest.mark.parametrize("shape", [(3, 10, 16), (24, 16)])  # enough tokens for folding to pay (20 here)
@pytest.mark.parametrize("training", [True, False])
def test_folded_update_gives_the_op_by_op_output_and_gradients(kind: str, shape: tuple, training: bool) -> None:
    """At dropout 0 over a frozen float32 Linear / GPT-2 Conv1D the update is folded into the weight:
    output and the gradients of x, A and B equal the op-by-op path's to 1e-6 relative."""
    layer = _layer(torch.float32, 0.1, kind == "gpt2-conv1d")
    layer.train(training)
    layer.lora_dropout["a"] = nn.Identity() if training else layer.lora_dropout["a"]  # dropout 0 / not at work
    x = torch.randn(*shape)
    assert _function_of(layer(x.requires_grad_(True))) == "FoldedLoraBackward"
    out_f, grads_f, _ = _run(layer, x, fused=True)
    out_u, grads_u, _ = _run(layer, x, fused=False)
    _close(out_f, out_u, torch.float32)
    _gradients_agree(tuple(grads_f.values()), tuple(grads_u.values()), tuple(grads_f))


@pytest.mark.parametrize(
    "case", ["dropout", "bfloat16", "trainable-base", "base-hook", "own-forward", "autocast", "no-grad", "conv2d"]
)
def test_update_folded_only_where_the_base_call_can_be_skipped_exactly(case: str) -> None:
    """Anything the folded function would change or skip keeps the other paths: dropout at work, a
    half-precision base, a base that trains, hooks on the base layer (they must still run), a
    behaviour with its own forward (DoRA), autocast, no gradient recording, convolutions."""
    layer = _layer(torch.bfloat16 if case == "bfloat16" else torch.float32, 0.3 if case == "dropout" else 0.0,
                   "conv2d" if case == "conv2d" else False)  # fmt: skip
    layer.train()
    x = torch.randn(2, 16, 5, 5) if case == "conv2d" else torch.randn(24, 16)  # tokens enough to fold
    x = x.to(torch.bfloat16) if case == "bfloat16" else x
    expected = "FusedLoraBackward"
    calls: list[int] = []
    if case == "trainable-base":
        layer.base_layer.weight.requires_grad_(True)
    elif case == "base-hook":
        layer.base_layer.register_forward_hook(lambda m, i, o: calls.append(1))
    elif case == "own-forward":

        class OwnForward(AdapterBehaviour):  # keeps factors and update, like DoRA
            forward_path = "own"

            def forward(self, layer, adapter, x, result):
                return result * 0 + 1

        layer.behaviours["a"] = OwnForward()
        expected = "none"  # its forward ran: no adapter parameter is used
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        expected = "AddBackward0"  # the op-by-op path
    elif case == "no-grad":
        with torch.no_grad():
            out = layer(x)
        expected = "none"
    else:
        out = layer(x)
    if case == "conv2d":
        expected = "AddBackward0"  # dropout 0, one dtype, no rebuild: the op-by-op path keeps the same
    assert _function_of(out) == expected
    if case == "base-hook":
        assert calls == [1]
    if case == "own-forward":
        assert torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.37, 0.5])
def test_dropout_with_mask_matches_f_dropout(dtype: torch.dtype, p: float) -> None:
    """The fused function's dropout (on a CPU: the draw, 1/(1-p) and the product as one addcmul)
    gives F.dropout's values from the same random draws, and its keep-mask."""
    import torch.nn.functional as F

    from lora_studio.core.layers.fused_lora import _dropout_with_mask

    x = (torch.randn(4, 33, 70) * 5).to(dtype)
    torch.manual_seed(11)
    expected = F.dropout(x, p, training=True)
    after = torch.rand(3)
    torch.manual_seed(11)
    dropped, keep = _dropout_with_mask(x, p)
    assert torch.equal(torch.rand(3), after)  # the same number of draws
    assert torch.equal(dropped, expected)  # value for value (+0 and -0 compare equal)
    assert keep.dtype == torch.bool and torch.equal(keep, expected != 0)


@pytest.mark.parametrize("setting", ["dropout", "bfloat16-base", "gelu-input", "plain"])
def test_a_convolution_takes_the_fused_function_only_where_it_keeps_less(setting: str) -> None:
    """At dropout 0 over a base of the factors' dtype both paths keep x's storage and h, and the op-by-op
    one runs faster; the fused function is for dropout, a half-precision base, or an input it rebuilds."""
    layer = _layer(torch.bfloat16 if setting == "bfloat16-base" else torch.float32,
                   0.3 if setting == "dropout" else 0.0, "conv2d")  # fmt: skip
    layer.train()
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    x_in = torch.nn.functional.gelu(x) if setting == "gelu-input" else x
    out = layer(x_in.to(torch.bfloat16) if setting == "bfloat16-base" else x_in)
    assert _function_of(out) == ("AddBackward0" if setting == "plain" else "FusedLoraBackward")


@pytest.mark.parametrize("tokens, folded", [(19, False), (20, True), (64, True)])
def test_the_update_is_folded_only_from_as_many_tokens_as_make_it_pay(tokens: int, folded: bool) -> None:
    """Folding builds W + s·B·A twice a step whatever the batch; it pays from 2·in·out/(in+out) tokens
    on (19.2 for 16 → 24): below that the fused function runs instead."""
    layer = _layer(torch.float32, 0.0)
    layer.train()
    out = layer(torch.randn(tokens, 16, requires_grad=True))
    assert _function_of(out) == ("FoldedLoraBackward" if folded else "FusedLoraBackward")
