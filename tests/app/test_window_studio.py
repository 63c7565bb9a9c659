"""The window as a whole: loading (meta tree first), failures in place, the entry points,
closing during a run, drag and drop, and a look at what it draws."""

from __future__ import annotations

import subprocess
import sys

from PySide6.QtWidgets import QMessageBox
from studio_window import LOAD_TIMEOUT_MS, isolated_settings, open_digits_window

from lora_studio.app import launcher
from lora_studio.app.main_window import MainWindow
from lora_studio.core import ModelConfig


def test_the_tree_appears_from_the_meta_build_before_the_weights(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    seen: list[str] = []
    window.session.sig_tree_changed.connect(
        lambda tree: seen.append("meta" if window.session.loaded is None else "loaded"))
    window.session.sig_model_loaded.connect(lambda _loaded: seen.append("weights"))
    with qtbot.waitSignal(window.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        window.model_panel.open_demo("digits")
        assert window.model_panel.is_loading() and window.model_panel.progress.isVisibleTo(window.model_panel)
    assert seen.index("meta") < seen.index("weights")
    assert not window.model_panel.progress.isVisibleTo(window.model_panel)
    assert "Loaded demo:digits" in window.model_panel.status_label.text()


def test_a_failed_load_is_reported_and_the_window_stays_usable(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    missing = tmp_path / "nope.py"
    with qtbot.waitSignal(window.session.sig_model_failed, timeout=LOAD_TIMEOUT_MS) as failed:
        window.model_panel.load(ModelConfig(source="python", name=f"{missing}:build"))
    assert "does not exist" in failed.args[0]
    assert "does not exist" in window.model_panel.status_label.text()
    assert window.model_panel.load_button.isEnabled()
    assert window.layer_tree.ticked_layers() == ["conv1", "conv2", "fc1"]  # the last model is still shown


def test_model_pages_build_the_model_section(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    panel = window.model_panel
    panel.select_source("torchvision")
    qtbot.keyClicks(panel.tv_search, "resnet1")
    names = [panel.tv_list.item(i).text() for i in range(panel.tv_list.count())]
    assert "resnet18" in names and all("resnet1" in n for n in names)
    panel.tv_list.setCurrentRow(names.index("resnet18"))
    assert panel.model_config_from_page() == ModelConfig(source="torchvision", name="resnet18")
    panel.select_source("checkpoint")
    panel.ckpt_arch.setText("models/net.py:build")
    panel.ckpt_file.edit.setText("net.safetensors")
    assert panel.model_config_from_page() == ModelConfig(source="python", name="models/net.py:build",
                                                         checkpoint="net.safetensors")
    panel.select_source("transformers")
    assert "hub id" in str(_error(panel.model_config_from_page))


def _error(fn) -> Exception | None:
    try:
        fn()
    except ValueError as exc:
        return exc
    return None


def test_closing_during_a_run_asks_then_stops(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    stopped: list[bool] = []
    monkeypatch.setattr(window.run_panel, "is_running", lambda: not stopped, raising=False)
    monkeypatch.setattr(window.run_panel, "stop_and_wait", lambda *a, **k: stopped.append(True) or True, raising=False)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert not window.close() and window.isVisible() and not stopped
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    assert window.close() and stopped == [True]


def test_dropping_a_project_opens_it(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.layer_tree.set_ticked(["fc1"])
    path = window.save_project_file(tmp_path / "p.toml")
    window.layer_tree.set_ticked(["conv1"])
    assert window.handle_drop(path) == "Opened project p.toml"
    assert window.layer_tree.ticked_layers() == ["fc1"]


def test_launcher_sends_cli_commands_to_core_and_never_loads_qt_for_them() -> None:
    code = ("import sys; from lora_studio.app.launcher import main; rc = main(['describe', 'demo:digits', "
            "'--depth', '0']); print(rc, sorted(m for m in sys.modules if m.startswith('PySide6')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"
    assert launcher.STUDIO_COMMAND == "studio"


def test_launcher_help_mentions_the_window(capsys) -> None:
    assert launcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "describe" in out and "opens the window" in out
