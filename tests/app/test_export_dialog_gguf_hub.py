"""The export dialog's GGUF and Hub rows: a GPT-2 (the story demo) written as a GGUF model and adapter
and read back by the dialog's own check; greyed with the reason for a model GGUF cannot hold; a push
that needs a repository id and shows where it went (the Hub call stood in for: no network)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_studio.app.dialogs import export_dialog
from lora_studio.app.dialogs.export_dialog import TOLERANCE, ExportDialog
from lora_studio.app.state.run_controller import RunController
from lora_studio.app.state.session import StudioSession
from lora_studio.core import PushResult, attach, demo_config, load_model

pytest.importorskip("gguf")


def _session_and_model(name: str, tmp_path: Path, targets: list[str] | None = None):
    config = demo_config(name, output_dir=tmp_path)
    loaded = load_model(config.model)
    lora = config.lora if targets is None else config.lora.replace(targets=targets)
    model = attach(copy.deepcopy(loaded.model), lora)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(std=0.05)
    session = StudioSession(config=dataclasses.replace(config, output=dataclasses.replace(config.output,
                                                                                           dir=str(tmp_path))))
    session.set_loaded(loaded)
    return session, model


def test_a_gpt2_is_written_as_gguf_and_read_back_by_the_dialog(qtbot, tmp_path) -> None:
    session, model = _session_and_model("story", tmp_path, ["c_attn"])
    dialog = ExportDialog(session, model)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.gguf_model_button.isEnabled() and dialog.gguf_adapter_button.isEnabled()
    dialog.gguf_type_combo.setCurrentText("q8_0")
    with qtbot.waitSignal(dialog.sig_exported, timeout=60_000) as signal:
        dialog.gguf_model_button.click()
    check = signal.args[0]
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30_000)
    assert check.what == "GGUF model" and check.path == tmp_path / "export" / "model.gguf" and check.path.is_file()
    assert check.within_tolerance and check.difference <= TOLERANCE["gguf-q8_0"]
    assert "compared its" in dialog.result_label.text() and "tensors" in dialog.result_label.text()
    dialog.gguf_type_combo.setCurrentText("f32")
    with qtbot.waitSignal(dialog.sig_exported, timeout=60_000) as signal:
        dialog.export_gguf_file("adapter", str(tmp_path / "adapter.gguf"))
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30_000)
    assert signal.args[0].what == "GGUF adapter" and signal.args[0].difference <= TOLERANCE["gguf-f32"]


def test_gguf_is_greyed_with_the_reason_for_a_model_it_cannot_hold(qtbot, tmp_path) -> None:
    session, model = _session_and_model("digits", tmp_path)
    dialog = ExportDialog(session, model)
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.gguf_model_button.isEnabled() and not dialog.gguf_adapter_button.isEnabled()
    assert dialog.gguf_reason.isVisible() and "gpt2, llama" in dialog.gguf_reason.text()


def test_a_push_needs_a_repository_and_shows_where_it_went(qtbot, tmp_path, monkeypatch) -> None:
    session, model = _session_and_model("digits", tmp_path)
    dialog = ExportDialog(session, model)
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.push_adapter_button.isEnabled()
    dialog.repo_edit.setText("alice/digits-lora")
    assert dialog.push_adapter_button.isEnabled()
    pushed = []

    def fake_push(run_dir, repo_id, *, kind, private):
        pushed.append((str(run_dir), repo_id, kind, private))
        return PushResult(repo_id, f"https://huggingface.co/{repo_id}", kind, ("README.md", "adapter_config.json"))

    monkeypatch.setattr(export_dialog, "push_run", fake_push)
    monkeypatch.setattr(RunController, "last_result", lambda self: SimpleNamespace(run_dir=str(tmp_path / "run")))
    dialog.private_check.setChecked(True)
    dialog.push_adapter_button.click()
    qtbot.waitUntil(lambda: not dialog.is_busy() and "Pushed" in dialog.status_label.text(), timeout=30_000)
    assert pushed == [(str(tmp_path / "run"), "alice/digits-lora", "adapter", True)]
    assert "https://huggingface.co/alice/digits-lora" in dialog.result_label.text()
