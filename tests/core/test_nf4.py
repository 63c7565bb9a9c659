"""NF4 quantisation (QLoRA, arXiv:2305.14314, section 3): the code book, the error bound, memory, kernels.

Error bound, per element, with c the block's absmax and c' the scale as stored (after double
quantisation, if any): |w − w'| ≤ c·G + |c − c'|, G = half the widest gap between NF4 levels.
For double quantisation (bitsandbytes' scheme) of y = (c − mean)/s to the nearest value of its signed
8-bit dynamic map, s = the scale block's max |c − mean|: |c − c'| ≤ s·G₈ + float32 rounding, G₈ = half
the widest gap between adjacent dynamic-map values (computed here from bitsandbytes' published
construction).  FLOAT_SLACK covers float32 rounding.
"""

import pytest
import torch

from lora_studio.core.layers.nf4_format import (
    NF4Layout,
    bitsandbytes_available,
    dequantize_absmax,
    dequantize_nf4,
    nf4_levels,
    quantize_nf4,
    stored_bytes,
)
from lora_studio.core.layers.nf4_linear import NF4Linear

# Appendix E of the paper (also bitsandbytes' get_4bit_type("nf4")), copied from the paper, not the code.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
FLOAT_SLACK = 1e-6  # relative to the block's absmax


def _weights(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[::97] *= 20  # outliers, which block-wise scaling is there to contain
    return w


def _true_absmax(w: torch.Tensor, block: int) -> torch.Tensor:
    flat = w.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % block)])
    return flat.reshape(-1, block).abs().amax(dim=1)


def _dynamic_half_gap() -> float:
    """Half the widest gap of bitsandbytes' signed dynamic map, built from its description (7 exponent steps
    10^-6..10^0, each holding the midpoints of 2^i + 1 linear boundaries on [0.1, 1], both signs, plus 0 and 1)."""
    values = {0.0, 1.0}
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float64)
        for m in ((edges[:-1] + edges[1:]) / 2 * 10 ** (i - 6)).tolist():
            values |= {m, -m}
    ordered = sorted(values)
    return max(b - a for a, b in zip(ordered, ordered[1:])) / 2


def test_code_book_is_the_published_nf4() -> None:
    torch.testing.assert_close(nf4_levels(), torch.tensor(PUBLISHED_NF4), atol=0, rtol=0)


def test_published_levels_follow_the_papers_construction() -> None:
    """Section 3: quantiles of N(0,1), 8 for the positive half and 7 for the negative, 0 exact, scaled to [-1, 1]."""
    offset = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))  # the mean of the 1/(2·15) and 1/(2·16) tail cut-offs
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    torch.testing.assert_close(
        levels / levels.max(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), atol=1e-6, rtol=0
    )  # the published numbers went through float32


@pytest.mark.parametrize("shape", [(32, 48), (10, 12), (7, 13)])  # the last two are not block multiples
@pytest.mark.parametrize("block", [64, 16])
def test_error_within_nf4_bound_without_double_quant(shape, block) -> None:
    w = _weights(*shape)
    layout = NF4Layout(shape, block, double_quant=False)
    tensors = quantize_nf4(w, layout)
    deq = dequantize_nf4(tensors, layout)
    c = _true_absmax(w, block)
    half_gap = max(b - a for a, b in zip(PUBLISHED_NF4, PUBLISHED_NF4[1:])) / 2
    bound = (c * (half_gap + FLOAT_SLACK)).repeat_interleave(block)[: w.numel()].reshape(shape)
    assert ((w - deq).abs() <= bound).all()
    assert (w - deq).abs().max() > 0.1 * bound.max(), "a real quantisation happened"


@pytest.mark.parametrize("shape", [(64, 96), (9, 11)])
def test_error_within_bound_with_double_quant(shape) -> None:
    block, dq_block = 16, 32  # small blocks so several scale blocks exist in a small tensor
    w = _weights(*shape, seed=1)
    layout = NF4Layout(shape, block, double_quant=True, double_quant_block_size=dq_block)
    tensors = quantize_nf4(w, layout)
    c = _true_absmax(w, block)
    c_stored = dequantize_absmax(tensors, layout)
    centred = c - c.mean()
    s = torch.cat([centred, centred.new_zeros(-c.numel() % dq_block)]).reshape(-1, dq_block).abs().amax(1)
    dq_bound = s.repeat_interleave(dq_block)[: c.numel()] * (_dynamic_half_gap() + FLOAT_SLACK)
    assert ((c - c_stored).abs() <= dq_bound + FLOAT_SLACK * c).all()
    assert (c - c_stored).abs().max() > 0, "the scales were quantised"
    half_gap = max(b - a for a, b in zip(PUBLISHED_NF4, PUBLISHED_NF4[1:])) / 2
    per_block = c * (half_gap + FLOAT_SLACK) + (c - c_stored).abs()
    bound = per_block.repeat_interleave(block)[: w.numel()].reshape(shape)
    assert ((w - dequantize_nf4(tensors, layout)).abs() <= bound).all()


def test_levels_times_absmax_and_zero_blocks_are_exact() -> None:
    levels = torch.tensor(PUBLISHED_NF4)
    # Blocks whose values are NF4 levels times their absmax (NF4 is asymmetric: -level is no level).
    w = torch.cat([levels * 0.5, torch.zeros(16), levels.flip(0) * 3.0, levels[torch.randperm(16)] * 2.0])
    w = w.reshape(4, 16)
    layout = NF4Layout((4, 16), 16, double_quant=False)
    torch.testing.assert_close(dequantize_nf4(quantize_nf4(w, layout), layout), w, atol=0, rtol=0)


def test_packing_puts_the_first_value_in_the_high_nibble() -> None:
    """bitsandbytes' order, so its CUDA kernel reads our bytes."""
    w = torch.tensor([[-1.0, 1.0] + [0.0] * 14])  # indices 0 and 15
    tensors = quantize_nf4(w, NF4Layout((1, 16), 16, double_quant=False))
    assert tensors["packed"][0].item() == 0x0F
    assert tensors["packed"][1].item() == 0x77  # two zeros: level index 7


def test_base_memory_is_at_most_0_3_of_float32() -> None:
    for double_quant, expected in ((True, 0.3), (False, 0.3)):
        layer = NF4Linear.from_float(torch.nn.Linear(256, 128), double_quant=double_quant)
        buffers = dict(layer.named_buffers())
        nbytes = sum(b.numel() * b.element_size() for b in buffers.values())
        assert nbytes == layer.quantised_bytes() == stored_bytes(layer.quantised_tensors())
        assert nbytes <= expected * 256 * 128 * 4
        assert "weight" not in dict(layer.named_parameters()), "no float weight is kept"
    # 4 bits per weight + one float32 absmax per 64 (0.5 bit) is 0.1406 of float32; double quant: ~0.129.
    assert NF4Linear.from_float(torch.nn.Linear(256, 128)).quantised_bytes() / (256 * 128 * 4) < 0.13


def test_forward_and_input_gradient_use_the_dequantised_weight() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(20, 6)
    layer = NF4Linear.from_float(linear, block_size=16)
    x = torch.randn(3, 20, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = layer(x)
    ref = torch.nn.functional.linear(x_ref, layer.dequantized_weight(), linear.bias)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=0)
    assert (out - linear(x)).abs().max() > 0, "the output is the quantised layer's, not the float one's"


def test_weight_property_is_read_only() -> None:
    """A float merge writing into ``.weight`` must fail loudly, not change a temporary copy."""
    layer = NF4Linear.from_float(torch.nn.Linear(8, 4))
    assert tuple(layer.weight.shape) == (4, 8)
    with torch.no_grad(), pytest.raises(RuntimeError, match="inference tensor"):
        layer.weight.copy_(torch.zeros(4, 8))


@pytest.mark.skipif(not bitsandbytes_available(), reason="needs bitsandbytes and a CUDA device")
@pytest.mark.parametrize("double_quant", [False, True])
def test_bitsandbytes_kernel_matches_pure_torch(double_quant) -> None:
    from bitsandbytes import functional as bnb_functional

    w = _weights(96, 80, seed=3).cuda()
    layout = NF4Layout((96, 80), 64, double_quant=double_quant)
    tensors = quantize_nf4(w, layout)
    fast = dequantize_nf4(tensors, layout, use_bnb=True)
    slow = dequantize_nf4(tensors, layout, use_bnb=False)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    torch.testing.assert_close(state.absmax.float(), _true_absmax(w, 64), atol=0, rtol=0)
    assert torch.equal(packed.reshape(-1), quantize_nf4(w, NF4Layout((96, 80), 64, False))["packed"])
    layer = NF4Linear.from_float(torch.nn.Linear(80, 96).cuda(), double_quant=double_quant)
    assert layer.uses_bitsandbytes
    x = torch.randn(4, 80, device="cuda")
    weight = dequantize_nf4(layer.quantised_tensors(), layer.layout, use_bnb=False)
    expected = torch.nn.functional.linear(x, weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
