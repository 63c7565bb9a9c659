"""Atomic writes give the final file the permissions a plain write would (0666 & ~umask), not the
0600 of a temporary file: weights and projects are as readable as the JSON beside them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lora_studio.core import LoraConfig, RunConfig, attach, export_merged, save_adapter
from lora_studio.core.disk.atomic_files import atomic_path, atomic_write_text, replace_folder
from lora_studio.core.disk.safetensors_writer import write_safetensors

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o027, 0o077], ids=lambda u: f"umask{u:03o}")
def umask(request):
    """Run the test under an explicit umask (restored afterwards)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_write_mode(folder: Path) -> int:
    """What open(..., 'w') gives in ``folder`` under the current umask: the reference."""
    reference = folder / "plain.txt"
    reference.write_text("x")
    return _mode(reference)


def _adapted_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    attach(model, LoraConfig(r=2, targets=["0", "2"]))
    return model


def test_new_files_get_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    assert _plain_write_mode(tmp_path) == expected
    atomic_write_text(tmp_path / "notes.txt", "hello")
    write_safetensors({"w": torch.zeros(3)}, tmp_path / "weights.safetensors")
    with atomic_path(tmp_path / "raw.bin") as tmp:
        tmp.write_bytes(b"\0")
    with atomic_path(tmp_path / "saved.safetensors") as tmp:  # the trainer's final weights
        save_file({"w": torch.zeros(3)}, str(tmp))  # safetensors itself writes 0600
    for name in ("notes.txt", "weights.safetensors", "raw.bin", "saved.safetensors"):
        assert _mode(tmp_path / name) == expected, name


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "project.toml"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_project_adapter_and_merged_export_match_a_plain_write(tmp_path: Path, umask: int) -> None:
    expected = _plain_write_mode(tmp_path)
    RunConfig().save(tmp_path / "project.toml")
    model = _adapted_model()
    adapter = save_adapter(model, tmp_path / "adapter")
    result = export_merged(model, tmp_path / "merged.safetensors")
    written = [tmp_path / "project.toml", *sorted(p for p in Path(adapter).rglob("*") if p.is_file()), *result.files]
    assert len(written) >= 5  # project, adapter weights + config + metadata, merged weights + sidecar
    assert {p.name: _mode(p) for p in written} == {p.name: expected for p in written}


def test_a_replaced_folder_gets_a_plain_mkdirs_permissions(tmp_path: Path, umask: int) -> None:
    reference = tmp_path / "plain"
    reference.mkdir()
    with replace_folder(tmp_path / "export") as stage:  # a checkpoint, a save_pretrained folder
        (stage / "config.json").write_text("{}")
        save_file({"w": torch.zeros(3)}, str(stage / "model.safetensors"))
    assert _mode(tmp_path / "export") == _mode(reference) == 0o777 & ~umask
    assert _mode(tmp_path / "export" / "config.json") == 0o666 & ~umask
    assert _mode(tmp_path / "export" / "model.safetensors") == 0o666 & ~umask


def test_every_file_a_run_writes_matches_a_plain_write(tmp_path: Path, umask: int) -> None:
    from run_configs import digits_run

    from lora_studio.core.training import train

    expected = _plain_write_mode(tmp_path)
    out = tmp_path / "run"
    assert train(digits_run(out, max_steps=2, checkpoint_every=1, eval_every=1)).status == "finished"
    written = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.name for p in written}
    assert {"run.toml", "metrics.jsonl", "result.json", ".lora-studio.lock", "state.json",
            "model.safetensors", "adapter_model.safetensors"} <= names
    assert {str(p.relative_to(out)): _mode(p) for p in written} == {str(p.relative_to(out)): expected
                                                                     for p in written}
