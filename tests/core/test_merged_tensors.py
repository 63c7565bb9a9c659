"""merged_tensors (the export's no-copy path) says exactly what merged_copy's state dict holds.

For every registered variant and every tiny model: where merged_tensors answers, its keys are
``merged_copy(...).state_dict()``'s and every value -- merged weights made on demand -- is equal
bit for bit, in float32 and in bfloat16; where it cannot vouch (a variant with its own merge,
merge inputs, something merged already, another adapter asked for) it answers None and the export
takes the copy.  Plain LoRA must take the fast path on every model, so these checks cannot pass
by always answering None.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import ALL_CASES, Case, perturb_adapters

from lora_studio.core import LoraConfig, attach, available_variants, export_merged
from lora_studio.core.adapter.target_matching import preview_targets
from lora_studio.core.disk.merged_export import merged_copy
from lora_studio.core.disk.merged_tensors import merged_tensors
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.disk.safetensors_writer import PendingTensor
from lora_studio.core.layers import wrapper_for
from lora_studio.core.layers.behaviour import NonFiniteDeltaError

VARIANTS = available_variants()
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _adapted(variant, case: Case):
    config = LoraConfig(r=4, alpha=8, targets=case.targets, modules_to_save=case.modules_to_save, variant=variant.name)
    model = case.build()
    for name in preview_targets(model, config).matched:
        layer = model.get_submodule(name)
        if variant.unsupported_reason(wrapper_for(layer)[0](layer)):
            return None
    torch.manual_seed(0)
    attach(model, config)
    perturb_adapters(model)
    return model


def _made(value) -> torch.Tensor:
    return value.make() if isinstance(value, PendingTensor) else value


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_same_tensors_as_the_merged_copy(variant, case: Case, precision: str) -> None:
    model = _adapted(variant, case)
    if model is None:
        pytest.skip(f"{variant.name} cannot adapt every target of {case.name}")
    fast = merged_tensors(model, None, PRECISIONS[precision])
    if variant.name == "lora":
        assert fast is not None, "plain LoRA must take the no-copy path"
    if fast is None:
        pytest.skip(f"{variant.name}: the export takes the copy")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = merged_copy(model, None, precision).state_dict()
    assert fast.keys() == expected.keys()
    for key, value in expected.items():
        made = _made(fast[key])
        assert made.dtype == value.dtype and made.shape == value.shape, key
        assert torch.equal(made, value), key
    for key, value in model.state_dict().items():  # reading never changed the live model
        assert torch.equal(value, before[key]), key


def test_the_copy_is_taken_where_the_fast_path_cannot_vouch() -> None:
    case = next(c for c in ALL_CASES if c.name == "linear")
    lora = next(v for v in VARIANTS if v.name == "lora")
    model = _adapted(lora, case)
    assert merged_tensors(model, None, torch.float32) is not None
    assert merged_tensors(model, "other", torch.float32) is None  # not the active adapter
    assert merged_tensors(model, None, torch.float32, {"task_id": 1}) is None  # merge inputs
    assert merged_tensors(case.build(), None, torch.float32) is None  # no adapter at all
    dora = _adapted(next(v for v in VARIANTS if v.name == "dora"), case)
    assert merged_tensors(dora, None, torch.float32) is None  # its own merge (caches norms)


def test_a_non_finite_update_writes_nothing(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    attach(model, LoraConfig(r=2, targets=["0", "1"]))
    export_merged(model, tmp_path / "m.safetensors")
    before = (tmp_path / "m.safetensors").read_bytes()
    with torch.no_grad():
        model[1].base_layer.weight[0, 0] = float("inf")  # finite factors, an infinite merged weight
    with pytest.raises(NonFiniteDeltaError, match=r"update of 1\.weight holds NaN or Inf; nothing was written"):
        export_merged(model, tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == before
    assert set(load_safetensors(tmp_path / "m.safetensors")) == {"0.weight", "0.bias", "1.weight", "1.bias"}


@pytest.mark.parametrize("case_name", ["bert", "gpt2"])
def test_transformers_folder_without_the_copy_equals_the_copys(tmp_path, monkeypatch, case_name: str) -> None:
    """The no-copy transformers export (save_pretrained on a shell, merged state dict) writes the same
    weights file, byte for byte, and the same config as save_pretrained on the merged copy; the live
    model and its config are untouched."""
    import json

    from lora_studio.core.disk.merged_export import _write_pretrained

    case = next(c for c in ALL_CASES if c.name == case_name)
    lora = next(v for v in VARIANTS if v.name == "lora")
    model = _adapted(lora, case)
    config_before = model.config.to_dict()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    import lora_studio.core.disk.merged_export as merged_export

    swaps = []
    real_call = merged_export._SwapPlaceholders.__call__

    def spy(self, tensors, filename, metadata=None):
        real_call(self, tensors, filename, metadata)
        swaps.append((len(self.swapped), len(self.pending)))

    monkeypatch.setattr(merged_export._SwapPlaceholders, "__call__", spy)
    fast = export_merged(model, tmp_path / "fast")
    assert swaps and swaps[-1][0] == swaps[-1][1] > 0  # merged weights were made by the writer, no fallback
    assert fast.kind == "transformers"
    slow = _write_pretrained(merged_copy(model, None, "float32"), tmp_path / "slow", None)
    slow_files = {p.name: p for p in slow}
    assert sorted(p.name for p in fast.files) == sorted(slow_files)
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == slow_files["model.safetensors"].read_bytes()
    assert json.loads((tmp_path / "fast" / "config.json").read_text()) == json.loads(
        slow_files["config.json"].read_text())
    assert model.config.to_dict() == config_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key


def test_transformers_folder_when_placeholders_are_not_swapped(tmp_path, monkeypatch) -> None:
    """If save_pretrained changed the placeholders on the way, the merged weights are made first and
    written as they are: still the copy's bytes, never a placeholder's uninitialised memory."""
    import lora_studio.core.disk.merged_export as merged_export

    case = next(c for c in ALL_CASES if c.name == "bert")
    model = _adapted(next(v for v in VARIANTS if v.name == "lora"), case)
    real_call = merged_export._SwapPlaceholders.__call__
    monkeypatch.setattr(merged_export._SwapPlaceholders, "__call__",
                        lambda self, tensors, filename, metadata=None: real_call(
                            self, {k: v.clone() for k, v in tensors.items()}, filename, metadata))  # fmt: skip
    export_merged(model, tmp_path / "fast")
    slow = merged_export._write_pretrained(merged_copy(model, None, "float32"), tmp_path / "slow", None)
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == next(
        p for p in slow if p.name == "model.safetensors").read_bytes()
