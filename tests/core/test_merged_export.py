"""export_merged / verify_export: a merged copy on disk that reopens with the original architecture."""

from __future__ import annotations

import pytest
import torch
from io_models import BERT, CONV_NET, ConvNet, call, minilm_folder, perturb
from io_models import pretrained as build_pretrained

from lora_studio.core import (
    LoraConfig,
    active_adapter,
    adapter_layers,
    attach,
    export_merged,
    list_adapters,
    set_active_adapter,
    verify_export,
)
from lora_studio.core.disk.merged_export import read_sidecar
from lora_studio.core.disk.safe_loading import load_safetensors, read_safetensors_header

# Merging in float32 only reorders sums; half precisions lose bits in the stored weights.
TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1e-1}


def _adapted(case, **config):
    model = build_pretrained(case)
    attach(model, LoraConfig(r=3, alpha=6, targets=case.targets, modules_to_save=case.modules_to_save, **config))
    perturb(model)
    return model


def _tiny_resnet():
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5).eval()


def test_torchvision_export_loads_strictly_into_the_same_constructor(tmp_path):
    model = _tiny_resnet()
    attach(model, LoraConfig(r=2, targets=r".*(conv\d|downsample\.0)", modules_to_save=["fc"]))
    perturb(model, std=0.02)  # larger updates compound through ten convolutions into huge activations
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    live = call(model, x)
    result = export_merged(model, tmp_path / "resnet.safetensors", example_inputs=x,
                           architecture={"torchvision": "resnet", "kwargs": {"layers": [1, 1, 1, 1]}})  # fmt: skip
    assert result.kind == "safetensors" and result.max_output_difference < 1e-4
    fresh = _tiny_resnet()
    fresh.load_state_dict(load_safetensors(result.path), strict=True)
    torch.testing.assert_close(call(fresh, x), live, atol=1e-4, rtol=0)  # deep conv stacks sum many terms
    sidecar = read_sidecar(result.path)
    assert sidecar["architecture"]["class"] == "torchvision.models.resnet.ResNet"
    assert sidecar["architecture"]["torchvision"] == "resnet" and sidecar["precision"] == "float32"
    # The live model keeps its adapters, unmerged, and its outputs.
    assert list_adapters(model) == ["default"] and not any(layer.merged for _, layer in adapter_layers(model))
    torch.testing.assert_close(call(model, x), live, atol=0, rtol=0)


@pytest.mark.parametrize("precision", ["float32", "float16", "bfloat16"])
def test_precision_is_stored_and_the_reported_difference_is_what_verify_measures(precision, tmp_path):
    model = _adapted(CONV_NET)
    x = CONV_NET.inputs()
    result = export_merged(model, tmp_path, precision=precision, example_inputs=x)
    header = read_safetensors_header(result.path)
    stored = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[precision]
    assert {entry["dtype"] for k, entry in header.items() if k != "__metadata__"} == {stored}
    assert result.max_output_difference <= TOL[precision]
    # The reloaded file holds exactly the weights the reported number was measured on.
    assert verify_export(result, model, x) == result.max_output_difference
    assert verify_export(result.path, model, x, build=lambda: ConvNet()) == result.max_output_difference


def test_merge_happens_in_float32_over_a_bfloat16_base(tmp_path):
    model = build_pretrained(CONV_NET).to(torch.bfloat16)
    attach(model, LoraConfig(r=2, targets=["conv1"]))
    perturb(model)
    layer = dict(adapter_layers(model))["conv1"]
    expected = (layer.base_layer.weight.float() + layer.delta_weight("default")).to(torch.bfloat16)
    result = export_merged(model, tmp_path / "m.safetensors", precision="bfloat16")
    assert torch.equal(load_safetensors(result.path)["conv1.weight"], expected)


def test_a_named_adapter_is_exported_and_the_active_one_stays(tmp_path):
    model = _adapted(BERT)
    attach(model, LoraConfig(r=2, targets=["key"]), adapter_name="other")
    perturb(model, seed=9)
    set_active_adapter(model, "default")
    x = BERT.inputs()
    result = export_merged(model, tmp_path / "bert", adapter_name="other")
    assert result.adapter_name == "other" and active_adapter(model) == "default"
    set_active_adapter(model, "other")
    assert verify_export(result, model, x) < TOL["float32"]


def test_transformers_export_reopens_with_auto_model(tmp_path):
    from transformers import AutoModel

    model = _adapted(BERT)
    x = BERT.inputs()
    result = export_merged(model, tmp_path / "merged", example_inputs=x)
    assert result.kind == "transformers" and (result.path / "config.json").is_file()
    assert (result.path / "model.safetensors").is_file()
    reopened = AutoModel.from_pretrained(result.path).eval()
    torch.testing.assert_close(call(reopened, x), call(model, x), atol=TOL["float32"], rtol=0)


def test_real_minilm_merged_export_with_tokenizer(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm_folder()).eval()
    attach(model, LoraConfig(r=4, alpha=8, targets=["query", "value", "dense"]))
    perturb(model, std=0.05)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    x = dict(tokenizer(["a tiny adapter test", "merged and reopened"], padding=True, return_tensors="pt"))
    result = export_merged(model, tmp_path / "minilm-merged", example_inputs=x)
    # Six layers of reordered float32 sums and LayerNorms: a few dozen ulps of the largest output (seen:
    # 1.9e-5 on outputs up to ~6 on an AMD EPYC, under 1e-5 elsewhere), so the bound scales with the output.
    live = call(model, x)
    bound = TOL["float32"] * float(live.abs().max())
    assert result.max_output_difference < bound
    reopened = AutoModel.from_pretrained(result.path).eval()
    torch.testing.assert_close(call(reopened, x), live, atol=bound, rtol=0)
    # The tokenizer came along (copied from the model's own folder) and tokenizes identically.
    again = AutoTokenizer.from_pretrained(result.path)
    assert again("a tiny adapter test")["input_ids"] == tokenizer("a tiny adapter test")["input_ids"]
    assert verify_export(result, model, x) < bound


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch):
    model = _adapted(CONV_NET)
    x = CONV_NET.inputs()
    first = export_merged(model, tmp_path / "m.safetensors")
    before = first.path.read_bytes()
    perturb(model, seed=21)

    import lora_studio.core.disk.safetensors_writer as writer

    real_slices = writer._byte_slices
    written = []

    def broken(tensor):
        if written:  # the first tensor goes out, then the disk fills up
            raise OSError("disk full")
        written.append(tensor)
        yield from real_slices(tensor)

    monkeypatch.setattr(writer, "_byte_slices", broken)
    with pytest.raises(OSError, match="disk full"):
        export_merged(model, tmp_path / "m.safetensors")
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.export.json", "m.safetensors"]
    assert verify_export(first, _adapted(CONV_NET), x) < TOL["float32"]


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        export_merged(_adapted(CONV_NET), tmp_path / "m.safetensors", precision="int8")


def test_a_model_wrapped_after_attach_exports_merged(tmp_path):
    """Adapters attached to a model that was then wrapped (``nn.Sequential(model)``) are still found,
    merged and unwrapped: the file holds the wrapped plain architecture's keys, with the merge in it."""
    from torch import nn

    inner = _adapted(CONV_NET)
    wrapped = nn.Sequential(inner)
    x = CONV_NET.inputs()
    result = export_merged(wrapped, tmp_path / "w.safetensors", example_inputs=x)
    assert result.adapter_name == "default"
    plain = nn.Sequential(ConvNet())
    assert set(read_safetensors_header(result.path)) - {"__metadata__"} == set(plain.state_dict())
    assert result.max_output_difference < TOL["float32"]
    assert verify_export(result, wrapped, x) < TOL["float32"]
    perturbed_output = call(wrapped, x)
    plain.load_state_dict(load_safetensors(result.path), strict=True)
    assert (call(plain, x) - perturbed_output).abs().max() < TOL["float32"]  # the update is in the file


def test_adapters_on_two_separate_submodules_are_refused(tmp_path):
    from torch import nn

    both = nn.Sequential(_adapted(CONV_NET), _adapted(CONV_NET))
    with pytest.raises(ValueError, match="attached separately to 2 sub-modules.*'0', '1'"):
        export_merged(both, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())
