"""bitsandbytes' 4-bit layout without bitsandbytes: every weight of a fixture bitsandbytes itself
quantised (``make_bnb_4bit_fixture.py``: NF4 and FP4, nested and plain scales, a short last block,
float32/bfloat16/float16) dequantises to exactly bitsandbytes' reference result (its default backend, the
CUDA kernels' semantics), bit for bit; the studio quantises the fixture's float weights to the same bytes,
and its own 4-bit layers convert to bitsandbytes' entries and back without a changed bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lora_studio.core.disk.bnb_4bit import (
    bnb_4bit_entries,
    bnb_4bit_keys,
    bnb_4bit_names,
    dequantize_bnb_4bit,
    dequantize_bnb_state_dict,
    nf4_linear_entries,
    nf4_linear_from_bnb,
    nf4_linear_from_bnb_module,
    read_bnb_4bit,
    to_bnb_linear4bit,
)
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.layers.nf4_format import NF4Layout, dynamic_map, quantize_nf4
from lora_studio.core.layers.nf4_linear import NF4Linear

FIXTURE = Path(__file__).parent / "data" / "bnb_4bit_fixture.safetensors"
CASES = ("fp4_nested", "nf4_nested", "nf4_plain", "nf4_ragged")


@pytest.fixture(scope="module")
def stored() -> dict[str, torch.Tensor]:
    return load_safetensors(FIXTURE)


def test_the_quantised_weights_are_found(stored) -> None:
    quantised = {k: v for k, v in stored.items() if not k.startswith(("expected.", "source."))}
    assert bnb_4bit_names(quantised) == list(CASES)


@pytest.mark.parametrize("name", CASES)
def test_dequantised_equals_bitsandbytes_bit_for_bit(stored, name) -> None:
    expected = stored[f"expected.{name}"]
    got = dequantize_bnb_4bit(stored, name)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got.view(torch.uint8) if got.dtype != torch.float32 else got.view(torch.int32),
                       expected.view(torch.uint8) if expected.dtype != torch.float32 else expected.view(torch.int32))


def test_a_state_dict_is_dequantised_whole(stored) -> None:
    plain = {k: v for k, v in stored.items() if not k.startswith(("expected.", "source."))}
    plain["bias"] = torch.ones(3)
    out = dequantize_bnb_state_dict(plain)
    assert sorted(out) == sorted([*CASES, "bias"])
    assert all(torch.equal(out[name], stored[f"expected.{name}"]) for name in CASES)


def test_a_damaged_record_is_named(stored) -> None:
    broken = dict(stored)
    del broken["nf4_nested.nested_absmax"]
    with pytest.raises(ValueError, match="'nf4_nested'.*damaged or incomplete"):
        dequantize_bnb_4bit(broken, "nf4_nested")
    short = dict(stored)
    short["nf4_plain"] = stored["nf4_plain"][:10]
    with pytest.raises(ValueError, match="cannot hold its shape"):
        dequantize_bnb_4bit(short, "nf4_plain")


# -- the studio's own 4-bit base is bitsandbytes' layout ------------------------------------------------------
def _record_layout(stored, name):
    return read_bnb_4bit(stored, name).layout


@pytest.mark.parametrize("name", CASES)
def test_the_studio_quantises_as_bitsandbytes_does_bit_for_bit(stored, name) -> None:
    """The fixture's float weights quantised here give bitsandbytes' very bytes, scales, nested scales and offset."""
    ours = quantize_nf4(stored[f"source.{name}"], _record_layout(stored, name))
    theirs = read_bnb_4bit(stored, name).tensors
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name", CASES)
def test_bitsandbytes_entries_round_trip_through_the_studios_layout(stored, name) -> None:
    """bitsandbytes' state-dict entries -> the studio's tensors -> the entries again: every key, every byte
    (the JSON record included), so a checkpoint the studio writes is one bitsandbytes reads."""
    weight = read_bnb_4bit(stored, name)
    written = bnb_4bit_entries(name, weight.tensors, weight.layout, weight.dtype)
    original = {k: stored[k] for k in bnb_4bit_keys(stored, name)}
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and torch.equal(written[key], value), key


@pytest.mark.parametrize("double_quant", [True, False])
def test_the_studios_layer_round_trips_through_bitsandbytes_entries(double_quant) -> None:
    torch.manual_seed(0)
    layer = NF4Linear.from_float(torch.nn.Linear(96, 40).to(torch.bfloat16), double_quant=double_quant)
    back = nf4_linear_from_bnb(read_bnb_4bit(nf4_linear_entries("w", layer), "w"), layer.bias)
    assert back.layout == layer.layout and back.source_dtype == torch.bfloat16
    for key, tensor in layer.quantised_tensors().items():
        assert torch.equal(back.quantised_tensors()[key], tensor), key
    assert torch.equal(back.dequantized_weight(torch.float32), layer.dequantized_weight(torch.float32))


def test_double_quantised_scales_take_the_nearest_dynamic_code() -> None:
    """Where bitsandbytes' CPU kernel and its reference disagree (one code apart on about 0.1% of scales of a
    large weight), the studio keeps the reference's choice, the nearest value of the code book."""
    torch.manual_seed(5)
    weight = torch.randn(300, 257) * 0.05
    weight.view(-1)[::97] *= 20
    layout = NF4Layout((300, 257), 64, True, 256)
    tensors = quantize_nf4(weight, layout)
    flat = torch.cat([weight.reshape(-1), weight.new_zeros(-weight.numel() % 64)]).reshape(-1, 64)
    centred = flat.abs().amax(1) - tensors["nested_offset"]
    scales = tensors["nested_absmax"].repeat_interleave(256)[: centred.numel()]
    normalised = centred * (1.0 / scales)
    code = dynamic_map()
    chosen = (code[tensors["absmax"].long()] - normalised).abs()
    best = (code[None, :] - normalised[:, None]).abs().amin(1)
    assert torch.equal(chosen, best)


def test_a_code_book_that_is_not_bitsandbytes_standard_is_refused(stored) -> None:
    changed = dict(stored)
    changed["nf4_plain.quant_map"] = stored["nf4_plain.quant_map"] * 0.5
    with pytest.raises(ValueError, match="'nf4_plain': its quant_map is not bitsandbytes' standard code book"):
        read_bnb_4bit(changed, "nf4_plain")


_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not _BNB, reason="needs bitsandbytes (its CPU backend is enough)")
def test_the_studios_layer_hands_to_bitsandbytes_linear4bit_over_the_same_bytes() -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = NF4Linear.from_float(torch.nn.Linear(96, 40))
    theirs = to_bnb_linear4bit(layer)
    assert isinstance(theirs, bnb.nn.Linear4bit)
    assert torch.equal(bnb.functional.dequantize_4bit(theirs.weight.data, theirs.weight.quant_state),
                       layer.dequantized_weight(torch.float32))
    x = torch.randn(3, 96)
    torch.testing.assert_close(theirs(x), layer(x), atol=1e-6, rtol=0)  # the same weight, another matmul
    back = nf4_linear_from_bnb_module(theirs)
    assert all(torch.equal(back.quantised_tensors()[k], t) for k, t in layer.quantised_tensors().items())
