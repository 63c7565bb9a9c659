"""bitsandbytes' 4-bit layout read without bitsandbytes: every weight of a fixture bitsandbytes itself
quantised (``make_bnb_4bit_fixture.py``: NF4 and FP4, nested and plain scales, a short last block,
float32/bfloat16/float16) dequantises to exactly bitsandbytes' reference result (its default backend, the
CUDA kernels' semantics), bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_studio.core.disk.bnb_4bit import bnb_4bit_names, dequantize_bnb_4bit, dequantize_bnb_state_dict
from lora_studio.core.disk.safe_loading import load_safetensors

FIXTURE = Path(__file__).parent / "data" / "bnb_4bit_fixture.safetensors"
CASES = ("fp4_nested", "nf4_nested", "nf4_plain", "nf4_ragged")


@pytest.fixture(scope="module")
def stored() -> dict[str, torch.Tensor]:
    return load_safetensors(FIXTURE)


def test_the_quantised_weights_are_found(stored) -> None:
    assert bnb_4bit_names({k: v for k, v in stored.items() if not k.startswith("expected.")}) == list(CASES)


@pytest.mark.parametrize("name", CASES)
def test_dequantised_equals_bitsandbytes_bit_for_bit(stored, name) -> None:
    expected = stored[f"expected.{name}"]
    got = dequantize_bnb_4bit(stored, name)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got.view(torch.uint8) if got.dtype != torch.float32 else got.view(torch.int32),
                       expected.view(torch.uint8) if expected.dtype != torch.float32 else expected.view(torch.int32))


def test_a_state_dict_is_dequantised_whole(stored) -> None:
    plain = {k: v for k, v in stored.items() if not k.startswith("expected.")}
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
