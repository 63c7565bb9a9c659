"""The shortcuts that make merging and exporting cheap change nothing that is written or kept.

* the merged export's SHA-256 is hashed from the tensors in memory: it must equal the file's;
* the export's merged copy shares the live model's frozen float32 tensors outside adapter
  layers: the live model must come out unchanged, and the file must hold the merged weights;
* the NaN/Inf check before a merge is one float64 sum: it must agree with ``isfinite().all()``.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from core import LoraConfig, attach, export_merged, merge_and_unload
from core.layers.behaviour import _all_finite
from core.merged_export import _frozen_tensors_to_share, safetensors_digest
from core.safe_loading import load_safetensors


def test_digest_from_memory_equals_the_files(tmp_path) -> None:
    tensors = {
        "w": torch.randn(5, 7), "half": torch.randn(3, 3).to(torch.bfloat16), "ids": torch.arange(4),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "flags": torch.tensor([True, False]),
    }  # fmt: skip
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    assert safetensors_digest(path, tensors) == hashlib.sha256(path.read_bytes()).hexdigest()


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
    result = export_merged(model, tmp_path / "m.safetensors", precision="float32")
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


def test_only_frozen_float32_tensors_outside_adapters_are_shared() -> None:
    model = _adapted()
    shared = _frozen_tensors_to_share(model, torch.float32)
    assert {id(model[1].weight), id(model[1].bias)} <= shared.keys()  # the frozen LayerNorm
    inside = [*model[0].parameters(), *model[2].parameters()]  # adapter layer, modules-to-save
    assert not any(id(p) in shared for p in inside)
    assert _frozen_tensors_to_share(model, torch.bfloat16) == {}  # a cast would change them
    assert _frozen_tensors_to_share(_adapted(torch.bfloat16), torch.float32) == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_by_sum_agrees_with_isfinite(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    cases = [torch.ones(3, 3), torch.full((4, 4), big), torch.tensor([big, big, -big]), torch.zeros(0)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(5, 5)
        t[2, 3] = bad
        cases.append(t)
    cases.append(torch.tensor([float("inf"), -float("inf")]))
    for t in cases:
        t = t.to(dtype)
        assert _all_finite(t) == bool(torch.isfinite(t).all())
