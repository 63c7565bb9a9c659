"""LoHa (FedPara's Hadamard product, LyCORIS): identity start, the formula, layer types, errors, PEFT both ways.

Tolerances: EXACT for a fresh adapter's update (a zero factor gives exactly zero), FORMULA_TOL
for our ΔW against the product computed here with einsum, TOL (lycoris_oracle) against PEFT.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lycoris_oracle import TOL, assert_same_outputs, load_peft_saved, peft_loads, perturb_peft, write_peft_folder
from tiny_models import LAYER_CASES, MODEL_CASES, perturb_adapters
from torch import nn

from lora_studio.core import LoraConfig, attach, get_adapter_config, get_variant
from lora_studio.core.disk.peft_lycoris_format import (
    lycoris_compatibility_notes,
    lycoris_peft_config_dict,
)
from lora_studio.core.layers import AdapterLayer

peft = pytest.importorskip("peft")

FORMULA_TOL = 1e-6
CASES = {c.name: c for c in LAYER_CASES + MODEL_CASES}


def _loha(case_name: str, **changes) -> tuple[nn.Module, object]:
    case = CASES[case_name]
    torch.manual_seed(0)
    config = LoraConfig(r=3, alpha=6, **({"targets": case.targets} | changes), variant="loha")
    return attach(case.build(), config), case


def _hadamard(w1a, w1b, w2a, w2b, s: float) -> torch.Tensor:
    # FedPara eq. 2, written out index by index: ΔW[o, i] = s · Σ_k w1a[o,k] w1b[k,i] · Σ_l w2a[o,l] w2b[l,i]
    return s * torch.einsum("ok,ki,ol,li->oi", w1a, w1b, w2a, w2b)


def stored_factors(layer: AdapterLayer) -> list[torch.Tensor]:
    return [getattr(layer, n)["default"].detach() for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]


@pytest.mark.parametrize("case_name", [c.name for c in LAYER_CASES])
def test_every_layer_type_is_supported_and_starts_as_identity(case_name) -> None:
    model, case = _loha(case_name)
    layer = model.get_submodule(case.targets[0])
    assert get_variant("loha").unsupported_reason(layer) is None
    for key, delta in layer.delta_weights("default").items():
        assert torch.equal(delta, torch.zeros_like(delta)), f"{key}: a zero factor makes the product zero"


def test_description_lists_the_layer_types_and_what_peft_holds() -> None:
    text = get_variant("loha").description
    for name in ("Linear", "Conv1D", "Conv1d/2d/3d", "Embedding", "MultiheadAttention", "RNN"):
        assert name in text
    assert "PEFT" in text


@pytest.mark.parametrize("case_name", ["linear", "gpt2_conv1d"])
def test_delta_is_the_hadamard_product(case_name) -> None:
    model, case = _loha(case_name)
    perturb_adapters(model)
    layer = model.get_submodule("layer")
    expected = _hadamard(*stored_factors(layer), s=6 / 3)
    if case_name == "gpt2_conv1d":  # GPT-2's Conv1D stores its weight (in, out)
        expected = expected.t()
    torch.testing.assert_close(layer.delta_weight("default"), expected, atol=FORMULA_TOL, rtol=0)


def test_conv_delta_is_the_hadamard_product_of_the_flattened_kernel() -> None:
    model, _ = _loha("conv2d_strided_dilated")
    perturb_adapters(model)
    layer = model.layer
    expected = _hadamard(*stored_factors(layer), s=2.0).reshape(layer.base_layer.weight.shape)
    assert stored_factors(layer)[1].shape == (3, 3 * 3 * 3), "PEFT's shape: (r, in_channels · kh · kw)"
    torch.testing.assert_close(layer.delta_weight("default"), expected, atol=FORMULA_TOL, rtol=0)


def test_embedding_padding_row_never_changes() -> None:
    model, _ = _loha("embedding")
    perturb_adapters(model)
    layer = model.layer
    delta = layer.delta_weight("default")
    expected = _hadamard(*stored_factors(layer), s=2.0).t()  # factors describe the (dim, vocab) matrix, like LoRA's
    expected[layer.base_layer.padding_idx] = 0.0
    torch.testing.assert_close(delta, expected, atol=FORMULA_TOL, rtol=0)


def test_weight_space_layers_get_factors_per_weight() -> None:
    model, _ = _loha("multihead_attention")
    layer = model.attn
    shapes = {k: tuple(v.shape) for k, v in layer.hada_w1_a["default"].items()}
    assert shapes == {"in_proj_weight": (48, 3), "out_proj_weight": (16, 3)}


@pytest.mark.parametrize("init", ["gaussian", "pissa"])
def test_lora_initialisations_are_refused_and_the_model_is_untouched(init) -> None:
    case = CASES["linear"]
    model = case.build()
    refusal = f"init='{init}' is a LoRA initialisation; LoHa" if init == "gaussian" else "init='pissa' means the PiSSA variant, which cannot be combined with variant 'loha'"
    with pytest.raises(ValueError, match=refusal):
        attach(model, LoraConfig(r=2, targets=case.targets, variant="loha", init=init))
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


def test_layers_peft_lacks_are_named_in_the_notes() -> None:
    model, _ = _loha("gpt2_conv1d")
    assert any("Conv1D" in note for note in lycoris_compatibility_notes(model, "default"))
    model, _ = _loha("linear")
    assert lycoris_compatibility_notes(model, "default") == []


# -- PEFT as the oracle ------------------------------------------------------------------------------
PEFT_TARGETS = {"bert": r".*(query|value|intermediate\.dense)"}  # PEFT's LoHa has no Embedding form


@pytest.mark.parametrize("case_name", ["linear", "conv1d", "conv2d_strided_dilated", "bert"])
def test_peft_builds_the_same_loha_from_our_files(case_name, tmp_path) -> None:
    model, case = _loha(case_name, **({"targets": PEFT_TARGETS[case_name]} if case_name in PEFT_TARGETS else {}))
    perturb_adapters(model)
    peft_model = peft_loads(write_peft_folder(model, tmp_path), case.build())
    assert_same_outputs(model, peft_model, case.build(), case.make_input())


def test_peft_reads_per_layer_ranks_and_rslora_scale(tmp_path) -> None:
    base = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6))
    config = LoraConfig(r=4, alpha=8, targets=["0", "2"], rank_pattern={"2": 2}, alpha_pattern={"0": 3.0},
                        use_rslora=True, variant="loha")  # fmt: skip
    torch.manual_seed(0)
    model = attach(copy.deepcopy(base), config)
    perturb_adapters(model)
    peft_config = lycoris_peft_config_dict(model, "default")
    assert peft_config["peft_type"] == "LOHA" and peft_config["rank_pattern"] == {"2": 2}
    peft_model = peft_loads(write_peft_folder(model, tmp_path), copy.deepcopy(base))
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), model(x), atol=TOL, rtol=0)


@pytest.mark.parametrize("case_name", ["linear", "conv1d", "conv2d_strided_dilated"])
def test_we_load_what_peft_saved_with_the_same_outputs(case_name, tmp_path) -> None:
    from peft import LoHaConfig, get_peft_model

    case = CASES[case_name]
    peft_model = get_peft_model(case.build(), LoHaConfig(r=3, alpha=5, target_modules=["layer"])).eval()
    perturb_peft(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    ours = load_peft_saved(tmp_path, case.build())
    assert get_adapter_config(ours, "default").variant == "loha"
    assert_same_outputs(ours, peft_model, case.build(), case.make_input())


def test_peft_cp_decomposed_convolutions_load_with_the_same_outputs(tmp_path) -> None:
    """use_effective_conv2d (PEFT's CP kernels, hada_t1/hada_t2) loads as our setting of that name (issue 16)."""
    from peft import LoHaConfig, get_peft_model

    case = CASES["conv2d_strided_dilated"]
    peft_model = get_peft_model(case.build(), LoHaConfig(r=2, target_modules=["layer"], use_effective_conv2d=True))
    perturb_peft(peft_model, std=1.0)  # three factors per product: a larger spread keeps the update visible
    peft_model.save_pretrained(str(tmp_path))
    ours = load_peft_saved(tmp_path, case.build())
    assert get_adapter_config(ours, "default").variant_settings["use_effective_conv2d"] is True
    assert_same_outputs(ours, peft_model.eval(), case.build(), case.make_input())
