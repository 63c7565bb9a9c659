"""PiSSA as a variant: the adapted model equals the ORIGINAL model, the factors are the principal part.

Properties (Meng et al. 2024, section 3): with adapters on, outputs equal the model before
attaching within ORIGINAL_TOL (float32 SVD reconstruction); s·B·A is the best rank-r
approximation of W, so ||W - s·B·A||_F² equals the sum of the trailing squared singular
values (Eckart–Young) and BᵀB = AAᵀ = diag(S_r / s) (the singular values split evenly);
a tied weight's other user is untouched; a rank above the weight's smaller side is refused
before anything changes.  SVD_TOL is relative, for float32 singular values.
"""

import contextlib
import copy

import pytest
import torch
from tiny_models import ALL_CASES, run
from torch import nn

from lora_studio.core import LoraConfig, adapter_layers, attach, disable_adapters, merge_and_unload

ORIGINAL_TOL = 1e-5
SVD_TOL = 1e-4
CASES = {c.name: c for c in ALL_CASES}


@pytest.mark.parametrize("case_name", ["linear", "conv2d_strided_dilated", "embedding", "gpt2_conv1d", "gru_cell",
                                       "gpt2"])  # fmt: skip
def test_adapted_model_equals_the_original_model(case_name: str) -> None:
    case = CASES[case_name]
    original = case.build()
    with torch.no_grad():
        expected = run(original, case.make_input())
    with pytest.warns(UserWarning, match="tied weights") if case_name == "gpt2" else contextlib.nullcontext():
        model = attach(copy.deepcopy(original), LoraConfig(r=4, alpha=8, targets=case.targets, variant="pissa"))
    with torch.no_grad():
        torch.testing.assert_close(run(model, case.make_input()), expected, atol=ORIGINAL_TOL, rtol=0)
        with disable_adapters(model):  # the base alone is the residual model: clearly different
            assert (run(model, case.make_input()) - expected).abs().max() > 100 * ORIGINAL_TOL


def test_factors_are_the_principal_part_split_evenly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(9, 7))
    weight = model[0].weight.detach().clone()
    r, alpha = 3, 6
    attach(model, LoraConfig(r=r, alpha=alpha, targets=["0"], variant="pissa"))
    layer = model[0]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = alpha / r
    singular = torch.linalg.svdvals(weight.double())
    residual = weight.double() - s * (b.double() @ a.double())
    torch.testing.assert_close(residual.pow(2).sum(), singular[r:].pow(2).sum(), rtol=SVD_TOL, atol=0)
    torch.testing.assert_close(layer.base_layer.weight.double(), residual, atol=ORIGINAL_TOL, rtol=0)
    half = torch.diag(singular[:r] / s)
    torch.testing.assert_close(b.double().t() @ b.double(), half, rtol=SVD_TOL, atol=SVD_TOL)
    torch.testing.assert_close(a.double() @ a.double().t(), half, rtol=SVD_TOL, atol=SVD_TOL)


def test_init_setting_is_overridden_and_merge_gives_back_the_original_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    attach(model, LoraConfig(r=2, targets=["0", "2"], init="gaussian", variant="pissa"))
    for _, layer in adapter_layers(model):
        assert layer.lora_B["default"].weight.abs().max() > 0, "PiSSA, not Gaussian: B starts non-zero"
    merged = merge_and_unload(model)
    for layer, weight in zip((merged[0], merged[2]), weights):
        assert type(layer) is nn.Linear
        torch.testing.assert_close(layer.weight, weight, atol=ORIGINAL_TOL, rtol=0)


def test_tied_weight_keeps_its_other_user() -> None:
    case = CASES["gpt2"]
    model = case.build()
    head_weight = model.lm_head.weight.detach().clone()
    with pytest.warns(UserWarning, match="tied weights"):
        attach(model, LoraConfig(r=4, targets=["wte"], variant="pissa"))
    torch.testing.assert_close(model.lm_head.weight, head_weight, atol=0, rtol=0)
    assert model.transformer.wte.base_layer.weight is not model.lm_head.weight


def test_rank_above_the_smaller_side_is_refused_and_the_model_is_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    weight = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="lower the rank"):
        attach(model, LoraConfig(r=4, targets=["0"], variant="pissa"))
    assert type(model[0]) is nn.Linear
    torch.testing.assert_close(model[0].weight, weight, atol=0, rtol=0)


def test_saved_with_the_original_base_it_is_plain_lora_anywhere(tmp_path) -> None:
    """Given the original base, a PiSSA-variant adapter is saved as the equivalent plain LoRA
    (rank 2r) that loads on an unmodified base, in LoRA Studio and in PEFT."""
    from peft import PeftModel
    from tiny_models import perturb_adapters

    from lora_studio.core import get_adapter_config, load_adapter, save_adapter

    case = CASES["linear"]
    original = case.build()
    model = attach(copy.deepcopy(original), LoraConfig(r=2, alpha=4, targets=case.targets, variant="pissa"))
    perturb_adapters(model, std=0.05)  # as if trained
    x = case.make_input()
    with torch.no_grad():
        expected = run(model, x)
    save_adapter(model, tmp_path, original_base=copy.deepcopy(original))
    reloaded = load_adapter(copy.deepcopy(original), tmp_path)
    assert get_adapter_config(reloaded).variant == "lora"
    peft_model = PeftModel.from_pretrained(copy.deepcopy(original), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(reloaded, x), expected, atol=ORIGINAL_TOL, rtol=0)
        torch.testing.assert_close(run(peft_model, x), expected, atol=ORIGINAL_TOL, rtol=0)


def test_a_rank_too_large_for_a_later_layer_changes_nothing() -> None:
    """The rank is checked on every target before any base weight becomes a residual."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 4))  # the second layer allows r <= 4 only
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="PiSSA needs rank <= 4 for layer '1'"):
        attach(model, LoraConfig(r=5, targets=["0", "1"], variant="pissa"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
