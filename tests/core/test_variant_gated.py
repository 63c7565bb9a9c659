"""Gated LoRA: the gate is in (0, 1) and depends on the input, forward follows the formula, merge is refused.

Tolerance: TOL (float32) for outputs computed two ways.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import LAYER_CASES, perturb_adapters, run

from lora_studio.core import LoraConfig, MergeNotSupportedError, adapter_layers, attach, get_variant, merge

TOL = 1e-6
CASES = {c.name: c for c in LAYER_CASES}
INPUT_SIDE = ["linear", "conv1d", "conv2d_strided_dilated", "conv3d", "embedding", "gpt2_conv1d"]


def _gated(case, **settings):
    torch.manual_seed(0)
    return attach(case.build(), LoraConfig(r=4, alpha=8, targets=case.targets, variant="gated",
                                           variant_settings=settings))


def _layer(model):
    (_, layer), = adapter_layers(model)
    return layer


def _layer_input(model, case) -> torch.Tensor:
    """The input the adapted layer sees (the cases apply it to the model input directly)."""
    x = case.make_input()
    return x[0] if isinstance(x, tuple) else x


@pytest.mark.parametrize("name", INPUT_SIDE)
def test_gate_lies_in_the_open_unit_interval_and_depends_on_the_input(name) -> None:
    case = CASES[name]
    model = _gated(case)
    perturb_adapters(model)
    layer = _layer(model)
    x = _layer_input(model, case)
    behaviour = layer.behaviours["default"]
    with torch.no_grad():
        g = behaviour.gate(layer, "default", x)
        h = layer.project_down(x.float() if x.is_floating_point() else x, layer.stored_factors("default", "weight")[0], "default")
    assert g.shape == h.shape, "one gate value per rank component of A·x"
    assert (g > 0).all() and (g < 1).all()
    assert g.std() > 1e-3, "the gate varies with the input once trained"


@pytest.mark.parametrize("bias", [0.0, 2.0, -1.5])
def test_a_fresh_gate_is_input_independent_at_sigmoid_of_its_bias(bias) -> None:
    case = CASES["linear"]
    model = _gated(case, gate_bias_init=bias)
    layer = _layer(model)
    with torch.no_grad():
        g = layer.behaviours["default"].gate(layer, "default", _layer_input(model, case))
    torch.testing.assert_close(g, torch.full_like(g, 1 / (1 + math.exp(-bias))), atol=TOL, rtol=0)


def test_linear_forward_matches_the_formula() -> None:
    case = CASES["linear"]
    model = _gated(case)
    perturb_adapters(model)
    layer = _layer(model)
    x = _layer_input(model, case)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    gate = layer.lora_gate["default"]
    with torch.no_grad():
        g = torch.sigmoid(x @ gate["weight"].t() + gate["bias"])
        expected = layer.base_layer(x) + layer.scaling["default"] * ((g * (x @ a.t())) @ b.t())
        torch.testing.assert_close(layer(x), expected, atol=TOL, rtol=0)


def test_conv_gate_acts_per_position_on_the_rank_channels() -> None:
    case = CASES["conv2d_strided_dilated"]
    model = _gated(case)
    perturb_adapters(model)
    layer = _layer(model)
    x = _layer_input(model, case)
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    gate = layer.lora_gate["default"]
    with torch.no_grad():
        logits = a._conv_forward(x, gate["weight"], None) + gate["bias"].view(1, -1, 1, 1)
        expected = layer.base_layer(x) + layer.scaling["default"] * b(torch.sigmoid(logits) * a(x))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_merge_is_refused_with_the_reason() -> None:
    assert get_variant("gated").can_merge is False
    case = CASES["linear"]
    model = _gated(case)
    perturb_adapters(model)
    before = model.state_dict()["layer.base_layer.weight"].clone()
    with pytest.raises(MergeNotSupportedError, match="cannot be merged.*depends on the input"):
        merge(model)
    with pytest.raises(MergeNotSupportedError, match="Gated LoRA cannot be merged"):
        _layer(model).merge("default")  # the layer refuses too, not only the model-level function
    assert torch.equal(model.state_dict()["layer.base_layer.weight"], before)


def test_the_gate_trains() -> None:
    case = CASES["linear"]
    model = _gated(case)
    perturb_adapters(model)
    run(model, case.make_input()).square().sum().backward()
    gate = _layer(model).lora_gate["default"]
    assert gate["weight"].grad.abs().sum() > 0 and gate["bias"].grad.abs().sum() > 0


def test_weight_space_layers_are_refused() -> None:
    case = CASES["multihead_attention"]
    with pytest.raises(ValueError, match="cannot adapt layer 'attn'.*no per-input rank activation"):
        _gated(case)


def test_pissa_is_refused() -> None:
    case = CASES["linear"]
    with pytest.raises(ValueError, match="init='pissa' means the PiSSA variant, which cannot be combined with variant 'gated'"):
        attach(case.build(), LoraConfig(r=4, targets=case.targets, variant="gated", init="pissa"))


@pytest.mark.parametrize("value", ["open", float("nan"), float("inf"), True])
def test_gate_bias_init_is_validated(value) -> None:
    with pytest.raises(ValueError, match="variant_settings.gate_bias_init must be a finite number"):
        LoraConfig(variant="gated", variant_settings={"gate_bias_init": value})


def test_embedding_gate_is_per_token() -> None:
    case = CASES["embedding"]
    model = _gated(case)
    perturb_adapters(model)
    layer = _layer(model)
    ids = _layer_input(model, case)
    with torch.no_grad():
        g = layer.behaviours["default"].gate(layer, "default", ids)
        gate = layer.lora_gate["default"]
        expected = torch.sigmoid(F.embedding(ids, gate["weight"].t()) + gate["bias"])
    torch.testing.assert_close(g, expected, atol=TOL, rtol=0)
