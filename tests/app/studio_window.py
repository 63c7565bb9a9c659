"""Helpers for the window tests: a main window with user settings in a temporary folder,
and the digits demo opened the way a user opens it."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from lora_studio.app.main_window import MainWindow

LOAD_TIMEOUT_MS = 20_000


def isolated_settings(folder: Path) -> None:
    """Keep QSettings (recent projects, layout, theme) out of the real user's config folder."""
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))


def open_digits_window(qtbot, tmp_path: Path) -> MainWindow:
    """A shown main window with the digits demo loaded (through Model → Open the digits demo)."""
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        window.model_panel.open_demo("digits")
    return window
