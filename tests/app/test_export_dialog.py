"""The export dialog on the digits demo: adapter and merged exports, each reloaded and checked."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from lora_studio.app.dialogs.export_dialog import TOLERANCE, ExportDialog, parse_merge_input
from lora_studio.app.state.session import StudioSession
from lora_studio.core import (
    EXPORT_PRECISIONS,
    GGUF_TYPES,
    attach,
    demo_config,
    load_model,
    verify_adapter,
    verify_export,
)

# One tolerance for float32 exports of this model, stated once: merging only reorders float32 sums.
FLOAT32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits demo's session (base loaded) and a copy of its base with a perturbed adapter."""
    config = demo_config("digits", output_dir=tmp_path_factory.mktemp("run"))
    loaded = load_model(config.model)
    return config, loaded


def _adapted(loaded, lora) -> torch.nn.Module:
    model = attach(copy.deepcopy(loaded.model), lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: give the adapter a real update, as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture
def dialog(qtbot, digits, tmp_path: Path) -> ExportDialog:
    config, loaded = digits
    session = StudioSession(config=dataclasses.replace(config, output=dataclasses.replace(config.output,
                                                                                           dir=str(tmp_path))))
    session.set_loaded(loaded)
    widget = ExportDialog(session, _adapted(loaded, config.lora))
    qtbot.addWidget(widget)
    widget.show()
    return widget


def _wait(qtbot, dialog: ExportDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30_000)


def test_precisions_are_those_export_merged_writes(dialog: ExportDialog) -> None:
    offered = [dialog.precision_combo.itemText(i) for i in range(dialog.precision_combo.count())]
    assert offered == list(EXPORT_PRECISIONS)
    # every precision offered has a tolerance (GGUF's types too)
    assert set(TOLERANCE) == set(EXPORT_PRECISIONS) | {f"gguf-{t}" for t in GGUF_TYPES}


def test_export_adapter_and_its_check(qtbot, dialog: ExportDialog, tmp_path: Path) -> None:
    with qtbot.waitSignal(dialog.sig_exported, timeout=30_000) as signal:
        dialog.adapter_button.click()
        assert not dialog.adapter_button.isEnabled()  # busy while the worker writes
    check = signal.args[0]
    _wait(qtbot, dialog)
    assert check.path == tmp_path / "export" / "adapter"
    assert (check.path / "adapter_model.safetensors").is_file() and (check.path / "adapter_config.json").is_file()
    assert check.difference == verify_adapter(check.path, dialog.model, dialog.example_inputs) <= FLOAT32_TOLERANCE
    assert f"largest difference {check.difference:.3g}" in dialog.result_label.text()
    assert check.samples == 8


def test_export_merged_shows_the_verified_difference(qtbot, dialog: ExportDialog, tmp_path: Path) -> None:
    assert dialog.merged_button.isEnabled()
    with qtbot.waitSignal(dialog.sig_exported, timeout=30_000) as signal:
        dialog.merged_button.click()
    check = signal.args[0]
    _wait(qtbot, dialog)
    assert check.path == tmp_path / "export" / "merged.safetensors" and check.path.is_file()
    expected = verify_export(check.path, dialog.model, dialog.example_inputs)
    assert check.difference == expected
    assert 0 < check.difference <= FLOAT32_TOLERANCE  # > 0: the adapter really changed the weights
    assert f"largest difference {expected:.3g}" in dialog.result_label.text()
    dialog.grab().save(str(tmp_path / "export_dialog.png"))


def test_half_precision_export_within_its_tolerance(qtbot, dialog: ExportDialog) -> None:
    dialog.precision_combo.setCurrentText("bfloat16")
    with qtbot.waitSignal(dialog.sig_exported, timeout=30_000) as signal:
        dialog.merged_button.click()
    check = signal.args[0]
    _wait(qtbot, dialog)
    assert check.precision == "bfloat16" and check.within_tolerance
    assert FLOAT32_TOLERANCE < check.difference <= TOLERANCE["bfloat16"]  # rounding shows, within reason
    assert check.difference == verify_export(check.path, dialog.model, dialog.example_inputs)


def test_a_variant_that_cannot_merge_greys_merged_export(qtbot, digits) -> None:
    config, loaded = digits
    session = StudioSession(config=config)
    gated = attach(copy.deepcopy(loaded.model), dataclasses.replace(config.lora, variant="gated"))
    widget = ExportDialog(session, gated)
    qtbot.addWidget(widget)
    widget.show()
    assert not widget.merged_button.isEnabled() and not widget.precision_combo.isEnabled()
    assert widget.adapter_button.isEnabled()
    assert widget.merge_reason.isVisible()
    assert widget.merge_reason.text().startswith("Gated LoRA cannot be merged: the gate g(x) scales")


def test_a_variant_that_merges_for_an_input_asks_for_it(qtbot, digits, tmp_path: Path) -> None:
    config, loaded = digits
    session = StudioSession(config=config)
    session.set_loaded(loaded)
    lora = dataclasses.replace(config.lora, variant="multitask", targets=["fc1"])
    widget = ExportDialog(session, _adapted(loaded, lora))
    qtbot.addWidget(widget)
    assert list(widget.merge_input_edits) == ["task_id"]
    widget.merge_input_edits["task_id"].setText("1")
    assert widget.merge_inputs() == {"task_id": 1}
    with qtbot.waitSignal(widget.sig_exported, timeout=30_000) as signal:
        widget.export_merged_model(str(tmp_path / "task1.safetensors"))
    check = signal.args[0]
    _wait(qtbot, widget)
    assert check.difference == verify_export(check.path, widget.model, widget.example_inputs,
                                             variant_inputs={"task_id": 1}) <= FLOAT32_TOLERANCE
    widget.merge_input_edits["task_id"].setText("")
    with qtbot.waitSignal(widget.sig_export_failed) as failed:
        widget.merged_button.click()
    assert failed.args[0] == "merge input task_id: a value is needed"


def test_no_model_means_nothing_to_export(qtbot) -> None:
    widget = ExportDialog(StudioSession(), None)
    qtbot.addWidget(widget)
    assert not widget.adapter_button.isEnabled() and not widget.merged_button.isEnabled()
    assert "train a run first" in widget.header_label.text()


def test_merge_inputs_parse() -> None:
    assert parse_merge_input("3") == 3 and parse_merge_input("0.5") == 0.5
    assert torch.equal(parse_merge_input("1, -1, 0.5"), torch.tensor([1.0, -1.0, 0.5]))


def test_the_run_panels_loaded_model_is_accepted(qtbot, digits, tmp_path: Path) -> None:
    """RunPanel.trained_model() returns a LoadedModel; the dialog exports its model."""
    config, loaded = digits
    trained = dataclasses.replace(loaded, model=_adapted(loaded, config.lora))
    widget = ExportDialog(StudioSession(config=config), trained)  # no model loaded in the session
    qtbot.addWidget(widget)
    assert widget.model is trained.model and widget.adapter_button.isEnabled()
    with qtbot.waitSignal(widget.sig_exported, timeout=30_000) as signal:
        widget.export_merged_model(str(tmp_path / "m.safetensors"))
    _wait(qtbot, widget)
    assert signal.args[0].difference == verify_export(tmp_path / "m.safetensors", trained.model,
                                                      widget.example_inputs)


def test_an_exported_adapter_names_its_classes_wherever_it_is_copied(qtbot, digits, tmp_path: Path) -> None:
    """The adapter's metadata carries the classes' names, so predict names them outside the run folder."""
    from lora_studio.core import load_for_inference

    config, loaded = digits
    names = [f"digit {i}" for i in range(10)]  # not the model's own '0'..'9': these must come from the file
    trained = dataclasses.replace(loaded, model=_adapted(loaded, config.lora), label_names=names)
    widget = ExportDialog(StudioSession(config=config), trained)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(widget.sig_exported, timeout=30_000):
        widget.export_adapter(str(tmp_path / "elsewhere"))
    _wait(qtbot, widget)
    assert load_for_inference(tmp_path / "elsewhere").label_names == names
