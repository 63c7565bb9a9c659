"""LoKr (LyCORIS's Kronecker product): identity start, the formula, layer types, errors, PEFT both ways.

Tolerances: EXACT for a fresh adapter's update (a zero W1 gives exactly zero), FORMULA_TOL for
our ΔW against the Kronecker product written out index by index here, TOL (lycoris_oracle)
against PEFT.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lycoris_oracle import TOL, assert_same_outputs, load_peft_saved, peft_loads, perturb_peft, write_peft_folder
from tiny_models import LAYER_CASES, perturb_adapters
from torch import nn

from lora_studio.core import LoraConfig, attach, get_adapter_config, get_variant
from lora_studio.core.disk.peft_lycoris_format import lycoris_compatibility_notes, lycoris_peft_config_dict
from lora_studio.core.layers import AdapterLayer
from lora_studio.core.variants.lokr import factorization

peft = pytest.importorskip("peft")

FORMULA_TOL = 1e-6
CASES = {c.name: c for c in LAYER_CASES}


def _lokr(base: nn.Module, targets, r: int = 4, alpha: float = 6, **settings) -> nn.Module:
    torch.manual_seed(0)
    return attach(base, LoraConfig(r=r, alpha=alpha, targets=targets, variant="lokr", variant_settings=settings))


def _kron(w1: torch.Tensor, w2: torch.Tensor, s: float) -> torch.Tensor:
    """ΔW[i·b + j, k·d + l, ...] = s · W1[i, k] · W2[j, l, ...], written out with einsum (not torch.kron)."""
    a, c = w1.shape
    b, d = w2.shape[:2]
    blocks = torch.einsum("ik,jl...->ijkl...", w1, w2)  # (a, b, c, d, *kernel)
    return s * blocks.reshape(a * b, c * d, *w2.shape[2:])


def _side(layer: AdapterLayer, side: str) -> torch.Tensor:
    full = layer._modules.get(f"lokr_w{side}")
    if full is not None and "default" in full:
        return full["default"].detach()
    return (getattr(layer, f"lokr_w{side}_a")["default"] @ getattr(layer, f"lokr_w{side}_b")["default"]).detach()


@pytest.mark.parametrize("case_name", list(CASES))
def test_every_layer_type_is_supported_and_starts_as_identity(case_name) -> None:
    case = CASES[case_name]
    model = _lokr(case.build(), case.targets)
    layer = model.get_submodule(case.targets[0])
    assert get_variant("lokr").unsupported_reason(layer) is None
    for key, delta in layer.delta_weights("default").items():
        assert torch.equal(delta, torch.zeros_like(delta)), f"{key}: a zero W1 makes the product zero"


@pytest.mark.parametrize("dimension", range(1, 130))
def test_factorization_agrees_with_peft(dimension) -> None:
    from peft.tuners.lokr.layer import factorization as peft_factorization

    assert factorization(dimension) == peft_factorization(dimension)
    for factor in (d for d in range(1, dimension + 1) if dimension % d == 0):
        assert factorization(dimension, factor) == peft_factorization(dimension, factor)


@pytest.mark.parametrize(
    ("r", "decompose_both", "expected_factors"),
    [
        (4, False, {"lokr_w1": (2, 3), "lokr_w2": (5, 4)}),  # out 10 = 2·5, in 12 = 3·4; r >= max(5, 4)/2
        (1, True, {"lokr_w1_a": (2, 1), "lokr_w1_b": (1, 3), "lokr_w2_a": (5, 1), "lokr_w2_b": (1, 4)}),
    ],
    ids=["full", "both_low_rank"],
)
def test_linear_delta_is_the_kronecker_product(r, decompose_both, expected_factors) -> None:
    model = _lokr(nn.Sequential(nn.Linear(12, 10)), ["0"], r=r, alpha=3, decompose_both=decompose_both)
    layer = model[0]
    shapes = {n: tuple(getattr(layer, n)["default"].shape) for n in layer.factor_attributes
              if n.startswith("lokr") and "default" in getattr(layer, n)}  # fmt: skip
    assert shapes == expected_factors
    perturb_adapters(model)
    expected = _kron(_side(layer, "1"), _side(layer, "2"), s=3 / r)
    torch.testing.assert_close(layer.delta_weight("default"), expected, atol=FORMULA_TOL, rtol=0)


@pytest.mark.parametrize("r", [2, 1], ids=["full_kernel_w2", "low_rank_w2"])
def test_conv2d_delta_keeps_the_kernel_in_w2(r) -> None:
    model = _lokr(nn.Sequential(nn.Conv2d(4, 6, 3)), ["0"], r=r, alpha=2)
    layer = model[0]
    perturb_adapters(model)
    w2 = _side(layer, "2").reshape(3, 2, 3, 3)  # out 6 = 2·3, in 4 = 2·2; the low-rank W2 is (b, d·kh·kw)
    expected = _kron(_side(layer, "1"), w2, s=2 / r)
    torch.testing.assert_close(layer.delta_weight("default"), expected, atol=FORMULA_TOL, rtol=0)


def test_decompose_factor_sets_the_small_factor() -> None:
    model = _lokr(nn.Sequential(nn.Linear(12, 8)), ["0"], decompose_factor=4)
    assert tuple(model[0].lokr_w1["default"].shape) == (4, 4)
    assert tuple(model[0].lokr_w2["default"].shape) == (2, 3)


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -2, True, 2.5, "4"])
def test_impossible_decompose_factor_is_refused_by_name(value) -> None:
    with pytest.raises(ValueError, match=r"^variant_settings\.decompose_factor must be -1"):
        LoraConfig(variant="lokr", variant_settings={"decompose_factor": value})


def test_a_factor_that_does_not_divide_the_layer_gets_peft_s_fallback_split() -> None:
    """PEFT's factorization(12, 5) walks the divisor pairs while m <= 5: (3, 4); factorization(10, 5) is (5, 2),
    since 5 divides 10 (issue 16: such files come from PEFT and must load)."""
    model = _lokr(nn.Sequential(nn.Linear(12, 10)), ["0"], decompose_factor=5)
    assert tuple(model[0].lokr_w1["default"].shape) == (5, 3)  # (out: 5 of 5·2, in: 3 of 3·4)
    assert tuple(model[0].lokr_w2["default"].shape) == (2, 4)


def test_lora_initialisations_are_refused() -> None:
    with pytest.raises(ValueError, match="init='gaussian' is a LoRA initialisation; LoKr"):
        attach(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=2, targets=["0"], variant="lokr", init="gaussian"))
    with pytest.raises(ValueError, match="init='pissa' means the PiSSA variant, which cannot be combined with variant 'lokr'"):
        attach(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=2, targets=["0"], variant="lokr", init="pissa"))


# -- PEFT as the oracle ------------------------------------------------------------------------------
OUR_TO_PEFT = [
    ("linear", {}),
    ("linear", {"decompose_both": True, "r": 1}),
    ("conv1d", {}),  # full 3-D W2: PEFT's own reading of torch.kron with a 2-D W1
    ("conv1d", {"r": 1}),
    ("conv2d_strided_dilated", {}),
    ("conv2d_strided_dilated", {"r": 1}),
]


@pytest.mark.parametrize(("case_name", "options"), OUR_TO_PEFT, ids=lambda v: str(v))
def test_peft_builds_the_same_lokr_from_our_files(case_name, options, tmp_path) -> None:
    case = CASES[case_name]
    model = _lokr(case.build(), case.targets, **options)
    perturb_adapters(model, std=0.5)  # up to four factors multiply: 0.1 each would leave too small an update
    peft_model = peft_loads(write_peft_folder(model, tmp_path), case.build())
    assert_same_outputs(model, peft_model, case.build(), case.make_input())


def test_peft_reads_decompose_factor_ranks_and_alphas(tmp_path) -> None:
    base = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 4))
    torch.manual_seed(0)
    config = LoraConfig(r=4, alpha=8, targets=["0", "2"], rank_pattern={"2": 1}, alpha_pattern={"0": 3.0},
                        variant="lokr", variant_settings={"decompose_factor": 2, "decompose_both": True})  # fmt: skip
    model = attach(copy.deepcopy(base), config)
    perturb_adapters(model)
    written = lycoris_peft_config_dict(model, "default")
    assert written["peft_type"] == "LOKR" and written["decompose_factor"] == 2 and written["decompose_both"] is True
    peft_model = peft_loads(write_peft_folder(model, tmp_path), copy.deepcopy(base))
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), model(x), atol=TOL, rtol=0)


PEFT_TO_OURS = [
    ("linear", dict(r=4, alpha=2)),
    ("linear", dict(r=1, alpha=3, decompose_both=True)),
    ("conv1d", dict(r=4, alpha=2)),
    ("conv2d_strided_dilated", dict(r=1, alpha=2, decompose_factor=1)),
]


@pytest.mark.parametrize(("case_name", "options"), PEFT_TO_OURS, ids=lambda v: str(v))
def test_we_load_what_peft_saved_with_the_same_outputs(case_name, options, tmp_path) -> None:
    from peft import LoKrConfig, get_peft_model

    case = CASES[case_name]
    peft_model = get_peft_model(case.build(), LoKrConfig(target_modules=["layer"], **options)).eval()
    perturb_peft(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    ours = load_peft_saved(tmp_path, case.build())
    assert get_adapter_config(ours, "default").variant == "lokr"
    assert_same_outputs(ours, peft_model, case.build(), case.make_input())


def test_layers_peft_lacks_are_named_in_the_notes() -> None:
    case = CASES["conv3d"]
    model = _lokr(case.build(), case.targets)
    assert any("Conv3d" in note for note in lycoris_compatibility_notes(model, "default"))
