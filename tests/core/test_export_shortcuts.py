"""The shortcuts that make merging and exporting cheap change nothing that is written or kept.

* the export's merged copy shares the live model's frozen float32 tensors -- the adapted layers'
  own base weights included: the live model must come out unchanged, and the file must hold the
  merged weights (and, asked for, the sidecar the file's true SHA-256);
* merging is one ``addmm`` per weight: it must equal ``W + s·(B @ A)`` computed the long way;
* the NaN/Inf check before a merge is one min/max reduction: it must agree with ``isfinite().all()``.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, export_merged, merge_and_unload
from lora_studio.core.disk.merged_export import _frozen_tensors_to_share
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.layers.behaviour import all_finite


def _adapted(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)).to(dtype)
    attach(model, LoraConfig(r=2, targets=["0"], modules_to_save=["2"]))
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_()
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_leaves_the_live_model_alone_and_writes_the_merge(tmp_path, dtype: torch.dtype) -> None:
    model = _adapted(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    result = export_merged(model, tmp_path / "m.safetensors", precision="float32", checksum=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert grads_before == {n: p.requires_grad for n, p in model.named_parameters()}
    expected = merge_and_unload(_adapted(dtype).float()).state_dict()  # export merges in float32
    written = load_safetensors(result.path)
    assert written.keys() == expected.keys()
    for k in expected:
        assert torch.equal(written[k], expected[k]), k
    sidecar = json.loads((tmp_path / "m.export.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()


def test_only_frozen_float32_tensors_merge_never_writes_are_shared() -> None:
    model = _adapted()
    shared = _frozen_tensors_to_share(model, torch.float32)
    assert {id(model[1].weight), id(model[1].bias)} <= shared.keys()  # the frozen LayerNorm
    assert id(model[0].base_layer.weight) in shared  # an adapted weight: merging the copy makes a new one
    kept_apart = [model[0].base_layer.bias, *model[0].lora_A.parameters(), *model[0].lora_B.parameters(),
                  *model[2].parameters()]  # the rest of the adapter layer, modules-to-save  # fmt: skip
    assert not any(id(p) in shared for p in kept_apart)
    assert _frozen_tensors_to_share(model, torch.bfloat16) == {}  # a cast would change them
    assert _frozen_tensors_to_share(_adapted(torch.bfloat16), torch.float32) == {}


def test_a_layer_already_merged_keeps_its_weight_to_itself(tmp_path) -> None:
    """A merged layer may hold untied originals that a later merge writes in place: no sharing there."""
    model = _adapted()
    attach(model, LoraConfig(r=2, targets=["0"]), adapter_name="second")
    with torch.no_grad():
        model[0].lora_B["second"].weight.normal_()
    model[0].merge("default")
    assert id(model[0].base_layer.weight) not in _frozen_tensors_to_share(model, torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_merged(model, tmp_path / "m.safetensors", adapter_name="second")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("transposed", [False, True])
def test_one_addmm_merge_equals_the_long_way(transposed: bool) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 9))
    attach(model, LoraConfig(r=3, alpha=5, targets=["0"]))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        if transposed:  # GPT-2's Conv1D layout, (in, out)
            layer.fan_in_fan_out = True
            layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.t().contiguous(), requires_grad=False)
    weight = layer.base_layer.weight.float()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    product = (b @ a) * layer.scaling["default"]
    expected = weight + (product.t() if transposed else product)
    got = layer.behaviours["default"].merged_weight(layer, "default", "weight", weight)
    assert got.shape == weight.shape and got.data_ptr() != weight.data_ptr()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # float32 rounding of a different order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_by_min_max_agrees_with_isfinite(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    cases = [torch.ones(3, 3), torch.full((4, 4), big), torch.tensor([big, big, -big]), torch.zeros(0)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(5, 5)
        t[2, 3] = bad
        cases.append(t)
    cases.append(torch.tensor([float("inf"), -float("inf")]))
    for position in range(67):  # every lane of a vectorised reduction, and its scalar tail
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = torch.randn(67)
            t[position] = bad
            cases.append(t)
    for t in cases:
        t = t.to(dtype)
        assert all_finite(t) == bool(torch.isfinite(t).all())
