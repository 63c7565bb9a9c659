"""An adapter file whose values cannot be what the model holds is refused, naming the tensor and
the file, and the model is left exactly as it was (issue 15): a header that lies about the dtype
(int32 bit patterns would be copied in as numbers), NaN/Inf factors, and damaged metadata."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from io_models import BERT, perturb
from io_models import pretrained as build_pretrained
from safetensors.torch import save_file

from lora_studio.core import AdapterMismatchError, LoraConfig, attach, load_adapter, save_adapter
from lora_studio.core.disk.adapter_folder import ADAPTER_WEIGHTS_NAME, STUDIO_METADATA_NAME
from lora_studio.core.disk.safe_loading import load_safetensors


def _saved(tmp_path):
    model = build_pretrained(BERT)
    attach(model, LoraConfig(r=2, alpha=4, targets=BERT.targets))
    perturb(model, seed=7)
    folder = tmp_path / "adapter"
    save_adapter(model, folder)
    return folder


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _rewrite_header(path, change) -> str:
    """Edit one tensor's entry of a safetensors header in place (same byte count); return its key."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    key = next(k for k in header if k != "__metadata__" and "lora_A" in k)
    change(header[key])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text))  # safetensors pads headers with spaces
    assert len(text) == length
    path.write_bytes(raw[:8] + text + raw[8 + length:])
    return key


def test_a_header_that_says_int32_for_float_weights_is_refused(tmp_path) -> None:
    folder = _saved(tmp_path)
    key = _rewrite_header(folder / ADAPTER_WEIGHTS_NAME, lambda entry: entry.update(dtype="I32"))
    assert load_safetensors(folder / ADAPTER_WEIGHTS_NAME)[key].dtype == torch.int32  # the lie reads as int32
    model = build_pretrained(BERT)
    before = _state(model)
    with pytest.raises(AdapterMismatchError, match=r"stored as int32.*float32") as refused:
        load_adapter(model, folder)
    assert key in str(refused.value) and str(folder) in str(refused.value)
    _assert_untouched(model, before)


def test_an_adapter_holding_nan_is_refused_with_the_tensor_named(tmp_path) -> None:
    folder = _saved(tmp_path)
    tensors = load_safetensors(folder / ADAPTER_WEIGHTS_NAME)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(folder / ADAPTER_WEIGHTS_NAME))
    model = build_pretrained(BERT)
    before = _state(model)
    with pytest.raises(AdapterMismatchError, match="NaN or Inf") as refused:
        load_adapter(model, folder)
    assert key in str(refused.value)
    _assert_untouched(model, before)


def test_metadata_without_its_config_names_the_file(tmp_path) -> None:
    folder = _saved(tmp_path)
    meta = folder / STUDIO_METADATA_NAME
    data = json.loads(meta.read_text())
    del data["config"]
    meta.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="has no 'config' table") as refused:
        load_adapter(build_pretrained(BERT), folder)
    assert str(meta) in str(refused.value)


def test_a_sound_adapter_still_loads(tmp_path) -> None:
    folder = _saved(tmp_path)
    load_adapter(build_pretrained(BERT), folder)  # no refusal: the checks only catch what is wrong


@pytest.mark.parametrize("damage", [b"\xff\xfe{", b'{"r": 2,', b"[1, 2]"], ids=["not-utf8", "not-json", "not-object"])
@pytest.mark.parametrize("name", ["adapter_config.json", STUDIO_METADATA_NAME])
def test_damaged_config_files_are_named_when_loaded_and_listed(tmp_path, damage, name) -> None:
    from lora_studio.core.disk.adapter_folder import read_adapter_facts

    folder = _saved(tmp_path)
    (folder / name).write_bytes(damage)
    model = build_pretrained(BERT)
    before = _state(model)
    for read in (lambda: load_adapter(model, folder), lambda: read_adapter_facts(folder)):
        with pytest.raises(ValueError) as refused:
            read()
        assert str(folder / name) in str(refused.value) and "damaged" in str(refused.value)
    _assert_untouched(model, before)
