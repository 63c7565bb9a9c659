"""The merged export's sidecar records the difference the export dialog measured and showed, not
``null`` (core's ``record_verification``, called by the dialog after its check)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lora_studio.app.dialogs.export_dialog import ExportDialog
from lora_studio.app.state.session import StudioSession
from lora_studio.core import (
    attach,
    demo_config,
    export_merged,
    load_model,
    read_sidecar,
    record_verification,
    verify_export,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    config = demo_config("digits", output_dir=tmp_path_factory.mktemp("run"))
    return config, load_model(config.model)


def _adapted(loaded, lora) -> torch.nn.Module:
    model = attach(copy.deepcopy(loaded.model), lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: a real update, as training would give
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_sidecar_records_the_difference_the_dialog_shows(qtbot, digits, tmp_path: Path, precision) -> None:
    config, loaded = digits
    session = StudioSession(config=config)
    session.set_loaded(loaded)
    dialog = ExportDialog(session, _adapted(loaded, config.lora))
    qtbot.addWidget(dialog)
    dialog.precision_combo.setCurrentText(precision)
    with qtbot.waitSignal(dialog.sig_exported, timeout=30_000) as signal:
        dialog.export_merged_model(str(tmp_path / "merged.safetensors"))
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30_000)
    check = signal.args[0]
    sidecar = read_sidecar(check.path)
    assert check.difference > 0  # the adapter changed the weights, so there is something to record
    assert sidecar["max_output_difference"] == check.difference  # exactly: the same float, via JSON
    assert f"largest difference {sidecar['max_output_difference']:.3g}" in dialog.result_label.text()
    assert sidecar["precision"] == precision and sidecar["weights_file"] == "merged.safetensors"


def test_record_verification_rewrites_only_that_value(digits, tmp_path: Path) -> None:
    config, loaded = digits
    model = _adapted(loaded, config.lora)
    result = export_merged(model, tmp_path / "m.safetensors", checksum=True)
    before = read_sidecar(result.path)
    assert before["max_output_difference"] is None  # written without running anything
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    difference = verify_export(result, model, x)
    assert record_verification(result, difference) == result.files[1]
    after = read_sidecar(result.path)
    assert after == {**before, "max_output_difference": difference}
    assert record_verification(tmp_path / "m.safetensors", 0.5) is not None  # a path works too
    assert read_sidecar(result.path)["max_output_difference"] == 0.5


def test_a_folder_without_a_sidecar_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert record_verification(folder, 1e-6) is None
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
