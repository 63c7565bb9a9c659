"""Unsaved work: the session knows it is modified, the title shows it, quitting, New, Open and
Load model ask first, and an autosave brings the work back after a crash."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox
from studio_window import LOAD_TIMEOUT_MS, isolated_settings, open_digits_window

from lora_studio.app.main_window import MainWindow
from lora_studio.app.state.autosave import pending_restore
from lora_studio.core import ModelConfig

Button = QMessageBox.StandardButton


def _answer(monkeypatch, button: QMessageBox.StandardButton) -> list[str]:
    """Make every question answer ``button``; returns the texts asked."""
    asked: list[str] = []

    def question(_parent, _title, text, *_args, **_kwargs):
        asked.append(text)
        return button

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked


def test_a_fresh_demo_is_not_modified_and_an_edit_is_until_saved(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    assert not window.session.is_modified() and not window.windowTitle().startswith("*")
    window.settings_panel.row("lora.r").set_text("12")
    assert window.session.is_modified() and window.windowTitle().startswith("*")
    window.settings_panel.row("lora.r").set_text("4")  # back to what was saved: nothing to lose
    assert not window.session.is_modified() and not window.windowTitle().startswith("*")
    window.settings_panel.row("lora.r").set_text("12")
    saved = window.save_project_file(tmp_path / "p.toml")
    assert saved is not None and not window.session.is_modified()
    assert window.windowTitle().startswith("p.toml") and "*" not in window.windowTitle()


def test_quitting_with_changes_asks_and_cancel_keeps_the_window(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    asked = _answer(monkeypatch, Button.Cancel)
    assert window.close() and not asked  # nothing changed: closes without a question
    window.show()
    window.settings_panel.row("lora.r").set_text("12")
    assert not window.close() and window.isVisible() and len(asked) == 1 and "Save the changes" in asked[0]
    _answer(monkeypatch, Button.Discard)
    assert window.close() and not window.isVisible()


def test_quitting_with_save_saves_first(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.save_project_file(tmp_path / "p.toml")
    window.settings_panel.row("lora.r").set_text("12")
    _answer(monkeypatch, Button.Save)
    assert window.close()
    assert "r = 12" in (tmp_path / "p.toml").read_text()


def test_a_run_and_unsaved_changes_make_one_question(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    stopped: list[bool] = []
    monkeypatch.setattr(window.run_panel, "is_running", lambda: not stopped, raising=False)
    monkeypatch.setattr(window.run_panel, "stop_and_wait", lambda *a, **k: stopped.append(True) or True, raising=False)
    window.settings_panel.row("lora.r").set_text("12")
    asked = _answer(monkeypatch, Button.Cancel)
    assert not window.close() and not stopped and len(asked) == 1
    assert "Resume continues" in asked[0] and "unsaved changes" in asked[0]
    _answer(monkeypatch, Button.Discard)
    assert window.close() and stopped == [True]


def test_new_open_and_load_model_ask_before_replacing_changes(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    project = window.save_project_file(tmp_path / "p.toml")
    window.settings_panel.row("lora.r").set_text("12")
    asked = _answer(monkeypatch, Button.Cancel)
    assert window.new_project() is False and window.session.config.lora.r == 12
    assert window.open_project_file(project) is None and window.session.config.lora.r == 12
    window.model_panel.open_demo("text")
    assert not window.model_panel.is_loading() and window.session.config.model.name == "digits"
    assert len(asked) == 3

    _answer(monkeypatch, Button.Discard)
    assert window.open_project_file(project) is None
    assert window.session.config.lora.r == 4 and not window.session.is_modified()


def test_an_autosave_is_written_while_modified_and_offered_at_the_next_start(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    autosaver = window.autosaver
    assert not autosaver.save_if_modified() and not autosaver.config_path.exists()  # nothing to keep yet
    window.settings_panel.row("lora.r").set_text("12")
    assert autosaver.save_if_modified() and autosaver.config_path.is_file()
    assert pending_restore(autosaver.folder).config.lora.r == 12

    # The "crash": a second window starts while the autosave is still there.
    isolated_settings(tmp_path / "settings")
    again = MainWindow()
    qtbot.addWidget(again)
    asked = _answer(monkeypatch, Button.Yes)
    with qtbot.waitSignal(again.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        assert again.offer_restore()
    assert len(asked) == 1 and again.session.config.lora.r == 12
    assert again.session.is_modified() and again.windowTitle().startswith("*")
    assert again.session.model_defaults.model == ModelConfig(source="demo", name="digits")


def test_saving_or_discarding_removes_the_autosave(qtbot, tmp_path, monkeypatch) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.settings_panel.row("lora.r").set_text("12")
    assert window.autosaver.save_if_modified()
    window.save_project_file(tmp_path / "p.toml")
    assert not window.autosaver.config_path.exists() and pending_restore(window.autosaver.folder) is None
    window.settings_panel.row("lora.r").set_text("16")
    assert window.autosaver.save_if_modified()
    _answer(monkeypatch, Button.Discard)
    assert window.close() and not window.autosaver.config_path.exists()
