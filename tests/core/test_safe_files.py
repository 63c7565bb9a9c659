"""Safety: atomic writes survive a crash mid-save, damaged files are refused, pickles never run code."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from io_models import BERT, call, fresh, perturb
from io_models import pretrained as build_pretrained
from safetensors.torch import save_file

from lora_studio.core import (
    CorruptFileError,
    LoraConfig,
    UnsafeFileError,
    attach,
    load_adapter,
    load_weights,
    save_adapter,
)
from lora_studio.core.disk.adapter_folder import ADAPTER_WEIGHTS_NAME
from lora_studio.core.disk.atomic_files import atomic_write_json, atomic_write_text, is_staging_name
from lora_studio.core.disk.safe_loading import load_safetensors

TOL = 1e-6  # a reloaded adapter must reproduce the saved one's outputs


def _adapted(seed: int = 7):
    model = build_pretrained(BERT)
    attach(model, LoraConfig(r=2, alpha=4, targets=BERT.targets))
    perturb(model, seed=seed)
    return model


def _no_leftovers(folder) -> bool:
    return not any(is_staging_name(p.name) for p in folder.rglob("*"))


# -- atomic writes ------------------------------------------------------------------------------------
def test_atomic_text_write_replaces_or_leaves_alone(tmp_path, monkeypatch):
    target = tmp_path / "notes.json"
    atomic_write_json(target, {"v": 1})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        atomic_write_text(target, "half")
    assert json.loads(target.read_text()) == {"v": 1} and _no_leftovers(tmp_path)


def test_save_adapter_that_crashes_mid_write_leaves_the_previous_adapter(tmp_path, monkeypatch):
    first = _adapted()
    x = BERT.inputs()
    save_adapter(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(RuntimeError, match="killed"):
        save_adapter(_adapted(seed=99), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before and _no_leftovers(tmp_path)
    torch.testing.assert_close(call(load_adapter(fresh(BERT), tmp_path), x), call(first, x), atol=TOL, rtol=0)


def test_a_process_killed_mid_save_leaves_the_previous_adapter(tmp_path):
    first = _adapted()
    x = BERT.inputs()
    save_adapter(first, tmp_path)
    # A child process starts saving another adapter over it and dies (os._exit: no cleanup at all)
    # halfway through writing the weights.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import safetensors.torch
        from io_models import BERT, perturb, pretrained
        from lora_studio.core import LoraConfig, attach, save_adapter

        def dying(tensors, filename, metadata=None):
            with open(filename, "wb") as handle:
                handle.write(b"\\x00" * 4096)
                handle.flush()
            os._exit(9)

        safetensors.torch.save_file = dying
        model = pretrained(BERT)
        attach(model, LoraConfig(r=2, alpha=4, targets=BERT.targets))
        perturb(model, seed=99)
        save_adapter(model, {str(tmp_path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    torch.testing.assert_close(call(load_adapter(fresh(BERT), tmp_path), x), call(first, x), atol=TOL, rtol=0)


# -- damaged files ---------------------------------------------------------------------------------------
def _good_file(path):
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}, str(path))
    return path.read_bytes()


def _with_header(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _damaged(tmp_path) -> dict[str, object]:
    good = _good_file(tmp_path / "good.safetensors")
    (hlen,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + hlen])
    data = good[8 + hlen :]
    cases = {}
    (tmp_path / "fake.safetensors").write_text("this is not a weights file at all, just text")
    cases["fake"] = tmp_path / "fake.safetensors"
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    cases["shorter than the length"] = tmp_path / "tiny.safetensors"
    (tmp_path / "truncated.safetensors").write_bytes(good[:-5])
    cases["truncated"] = tmp_path / "truncated.safetensors"
    lying = json.loads(json.dumps(header))
    name = next(k for k in lying if k != "__metadata__")
    lying[name]["data_offsets"][1] += 10**9  # points far past the end of the file
    _with_header(tmp_path / "lying.safetensors", lying, data)
    cases["offsets past the end"] = tmp_path / "lying.safetensors"
    overlap = json.loads(json.dumps(header))
    overlap["b"]["data_offsets"] = overlap["a"]["data_offsets"][:]
    overlap["b"]["shape"] = [6]
    _with_header(tmp_path / "overlap.safetensors", overlap, data)
    cases["overlapping tensors"] = tmp_path / "overlap.safetensors"
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    cases["absurd header length"] = tmp_path / "huge.safetensors"
    return cases


DAMAGE = ["fake", "shorter than the length", "truncated", "offsets past the end", "overlapping tensors",
          "absurd header length"]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_safetensors_files_are_refused_clearly(damage, tmp_path):
    with pytest.raises(CorruptFileError, match="corrupt or not a safetensors file"):
        load_weights(_damaged(tmp_path)[damage])
    assert torch.equal(load_safetensors(tmp_path / "good.safetensors")["b"], torch.ones(4))


def test_a_corrupt_adapter_file_is_refused_and_the_model_untouched(tmp_path):
    save_adapter(_adapted(), tmp_path)
    weights = tmp_path / ADAPTER_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    model = fresh(BERT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CorruptFileError, match="corrupt or not a safetensors file"):
        load_adapter(model, tmp_path)
    assert model.state_dict().keys() == before.keys()


# -- pickles -----------------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_malicious_pickle_never_runs(writer, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "adapter_model.bin"
    payload = {"weight": torch.zeros(2), "evil": _Exploit(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.warns(UserWarning, match="weights_only=True"), pytest.raises(UnsafeFileError, match="refused"):
        load_weights(path)
    assert not marker.exists()


def test_a_malicious_legacy_adapter_never_runs(tmp_path):
    save_adapter(_adapted(), tmp_path)
    (tmp_path / ADAPTER_WEIGHTS_NAME).unlink()
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.x": _Exploit(str(marker))}, tmp_path / "adapter_model.bin")
    with pytest.warns(UserWarning), pytest.raises(UnsafeFileError):
        load_adapter(fresh(BERT), tmp_path)
    assert not marker.exists()
