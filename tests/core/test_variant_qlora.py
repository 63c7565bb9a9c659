"""QLoRA (arXiv:2305.14314): the NF4 base plugs into the adapter engine, merges up in precision, unmerges exactly.

Tolerances: MERGE_TOL (float32) for merged vs unmerged outputs — both compute deq(W) + s·B·A in
float32, in another order; a re-quantised merge is held to the NF4 bound instead (test_nf4.py).
Unmerge is checked bit for bit: the very same 4-bit tensors come back.
"""

import copy
import warnings

import pytest
import torch
from tiny_models import MODEL_CASES, perturb_adapters, run
from torch import nn

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    delete_adapter,
    disable_adapters,
    load_adapter,
    merge,
    merge_and_unload,
    optimizer_param_groups,
    save_adapter,
    unmerge,
    variant_summary,
)
from lora_studio.core.layers.nf4_linear import NF4Linear

MERGE_TOL = 1e-5


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8))


def _qlora(targets=("0", "2"), **settings) -> LoraConfig:
    return LoraConfig(r=4, alpha=8, targets=list(targets), variant="qlora", variant_settings=settings)


def _x() -> torch.Tensor:
    return torch.randn(5, 16, generator=torch.Generator().manual_seed(1))


def _perturbed(**settings) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A QLoRA MLP whose adapters change the output, an input, and its (unmerged) output."""
    model = attach(_mlp(), _qlora(**settings))
    perturb_adapters(model)
    x = _x()
    with torch.no_grad():
        return model, x, model(x)


def _nf4_state(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = adapter_layers(model)
    return {f"{n}.{k}": v.clone() for n, layer in layers for k, v in layer.base_layer.state_dict().items()}


def test_attach_quantises_the_targets_and_reports_memory() -> None:
    model = attach(_mlp(), _qlora())
    for _, layer in adapter_layers(model):
        assert isinstance(layer.base_layer, NF4Linear)
        assert not any(p.requires_grad for p in layer.base_layer.parameters())
    report = variant_summary(model)
    assert report["quantised_layers"] == 2
    assert report["base_weight_bytes_float32"] == (16 * 64 + 64 * 8) * 4
    assert report["nf4_over_float32"] <= 0.3
    assert report["bitsandbytes_kernel"] is False or torch.cuda.is_available()


def test_fresh_adapter_is_the_quantised_base_and_trains_only_adapters() -> None:
    model = attach(_mlp(), _qlora())
    x = _x()
    with torch.no_grad(), disable_adapters(model):
        base = model(x)
    torch.testing.assert_close(model(x).detach(), base, atol=0, rtol=0)
    before = _nf4_state(model)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr=1e-2))
    model(x).square().mean().backward()
    optimizer.step()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained)
    for key, value in _nf4_state(model).items():
        assert torch.equal(value, before[key]), f"{key} changed in training"


def test_merge_gives_a_float32_model_equal_to_the_unmerged_one_and_unmerge_is_exact() -> None:
    model, x, unmerged = _perturbed()
    quantised = {n: layer.base_layer for n, layer in adapter_layers(model)}
    state = _nf4_state(model)
    merge(model)
    for name, layer in adapter_layers(model):
        assert type(layer.base_layer) is nn.Linear and layer.base_layer.weight.dtype == torch.float32
        expected = quantised[name].dequantized_weight(torch.float32) + layer.delta_weight("default")
        torch.testing.assert_close(layer.base_layer.weight, expected, atol=0, rtol=0)  # no rounding below float32
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=MERGE_TOL, rtol=0)
    unmerge(model)
    for name, layer in adapter_layers(model):
        assert layer.base_layer is quantised[name]
    assert all(torch.equal(v, state[k]) for k, v in _nf4_state(model).items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=0, rtol=0)


@pytest.mark.parametrize("merge_dtype", ["float64", "bfloat16"])
def test_merge_dtype_is_the_setting(merge_dtype) -> None:
    model = attach(_mlp(), _qlora(merge_dtype=merge_dtype))
    perturb_adapters(model)
    merge(model)
    for _, layer in adapter_layers(model):
        assert layer.base_layer.weight.dtype == getattr(torch, merge_dtype)


def test_a_second_merge_never_lowers_precision() -> None:
    model = attach(_mlp(), _qlora(merge_dtype="float64"), "wide")
    attach(model, _qlora(merge_dtype="bfloat16"), "narrow")
    perturb_adapters(model)
    x = _x()
    state = _nf4_state(model)
    layers = [layer for _, layer in adapter_layers(model)]
    for layer in layers:
        layer.merge("wide")
        layer.merge("narrow")
        assert layer.base_layer.weight.dtype == torch.float64, "bfloat16 would drop what the float64 merge holds"
    for order in (["wide", "narrow"], ["narrow", "wide"]):
        for layer in layers:
            layer.unmerge(order[0])
            layer.unmerge(order[1])
            layer.merge("wide")
            layer.merge("narrow")
    unmerge(model)
    assert all(torch.equal(v, state[k]) for k, v in _nf4_state(model).items())
    with torch.no_grad(), disable_adapters(model):
        base = model(x)
    with torch.no_grad():
        torch.testing.assert_close(base, _quantised_reference(x), atol=0, rtol=0)


def _quantised_reference(x: torch.Tensor) -> torch.Tensor:
    model = attach(_mlp(), _qlora())
    with torch.no_grad(), disable_adapters(model):
        return model(x)


def test_requantize_after_merge_warns_and_unmerge_still_restores() -> None:
    model, x, unmerged = _perturbed(requantize_after_merge=True)
    state = _nf4_state(model)
    with pytest.warns(UserWarning, match="stored in NF4 again, adding up to"):
        merge(model)
    for _, layer in adapter_layers(model):
        assert isinstance(layer.base_layer, NF4Linear)
    with torch.no_grad():
        requantised = model(x)
    assert 0 < (requantised - unmerged).abs().max() < 0.2 * unmerged.abs().max()  # NF4 error, not a lost update
    unmerge(model)
    assert all(torch.equal(v, state[k]) for k, v in _nf4_state(model).items())


def test_merge_and_unload_gives_plain_float_layers() -> None:
    model, x, expected = _perturbed()
    plain = merge_and_unload(model)
    assert [type(m) for m in plain] == [nn.Linear, nn.Tanh, nn.Linear]
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, atol=MERGE_TOL, rtol=0)


def _gpt2():
    case = next(c for c in MODEL_CASES if c.name == "gpt2")
    return case, LoraConfig(r=4, alpha=8, targets=["c_attn", "c_proj", "c_fc"], variant="qlora")


def test_gpt2_conv1d_layers_merge_back_into_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    case, config = _gpt2()
    model = attach(case.build(), config)
    perturb_adapters(model, std=0.05)
    with torch.no_grad():
        unmerged = run(model, case.make_input())
    shapes = {n: tuple(layer.base_layer.weight.shape) for n, layer in adapter_layers(model)}
    assert variant_summary(model)["nf4_over_float32"] <= 0.3
    plain = merge_and_unload(model)
    for name, (out_f, in_f) in shapes.items():
        merged = plain.get_submodule(name)
        assert type(merged) is Conv1D and tuple(merged.weight.shape) == (in_f, out_f)  # transformers' layout
    with torch.no_grad():
        torch.testing.assert_close(run(plain, case.make_input()), unmerged, atol=1e-4, rtol=0)


def test_save_holds_only_adapters_and_load_quantises_again(tmp_path) -> None:
    from safetensors.torch import load_file

    case, config = _gpt2()
    model = attach(case.build(), config)
    perturb_adapters(model, std=0.05)
    save_adapter(model, tmp_path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fingerprint notes the quantised base (see the report)
        fresh = load_adapter(case.build(), tmp_path)
    assert all(isinstance(layer.base_layer, NF4Linear) for _, layer in adapter_layers(fresh))
    with torch.no_grad():
        torch.testing.assert_close(run(fresh, case.make_input()), run(model, case.make_input()), atol=0, rtol=0)


def test_refusals_leave_the_model_unchanged() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(5, 8))
    layers = list(model)
    with pytest.raises(ValueError, match="cannot adapt layer '1'.*linear layers only"):
        attach(model, LoraConfig(targets=["0", "1"], variant="qlora"))
    with pytest.raises(ValueError, match="PiSSA"):
        attach(model, LoraConfig(r=2, targets=["0"], init="pissa", variant="qlora"))
    assert list(model) == layers and type(model[0]) is nn.Linear


def test_tied_weights_are_refused() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight
    with pytest.raises(ValueError, match="shared with another module"):
        attach(model, LoraConfig(targets=["1"], variant="qlora"))
    assert type(model[1]) is nn.Linear and model[1].weight is model[0].weight


def test_mixing_with_float_variants_is_refused_or_loud() -> None:
    model = attach(_mlp(), LoraConfig(targets=["0"], variant="lora"), "plain")
    with pytest.raises(ValueError, match="another variant"):
        attach(model, _qlora(targets=["0"]), "q")
    model = attach(_mlp(), _qlora(targets=["0"]), "q")
    before = copy.deepcopy(model.state_dict())
    # A float variant over the 4-bit base would write its merge into the dequantised copy: refused up front.
    with pytest.raises(ValueError, match=r"stored in 4 bits .* set lora.variant = 'qlora'"):
        attach(model, LoraConfig(targets=["0"], variant="lora"), "plain")
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(before[k], v) for k, v in after.items())


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^variant_settings\.block_size"):
        LoraConfig(variant="qlora", variant_settings={"block_size": 48})
    with pytest.raises(ValueError, match=r"^variant_settings\.merge_dtype"):
        LoraConfig(variant="qlora", variant_settings={"merge_dtype": "int8"})


def test_delete_keeps_the_nf4_layer_which_can_be_adapted_again() -> None:
    model = attach(_mlp(), _qlora())
    delete_adapter(model, "default")
    assert isinstance(model[0], NF4Linear)
    attach(model, _qlora())
    assert isinstance(model[0].base_layer, NF4Linear)


def test_bfloat16_compute_dtype() -> None:
    model = attach(_mlp(), _qlora(compute_dtype="bfloat16"))
    out = model(_x())
    assert out.dtype == torch.float32 and model[0].base_layer.compute_dtype == torch.bfloat16
    copy.deepcopy(model)  # the quantised model copies like any module
