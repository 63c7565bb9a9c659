"""An unexpected exception in the window: the work autosaved, a report file, one message, no crash."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QMessageBox, QWidget

from lora_studio.app.error_hook import WindowErrorHook


def _raise_inside():
    try:
        {}["missing"]
    except KeyError:
        return sys.exc_info()


def test_an_unexpected_error_is_reported_saved_and_shown_once(qtbot, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    window = QWidget()
    qtbot.addWidget(window)
    saves, shown = [], []
    hook = WindowErrorHook(window, save_work=lambda: saves.append(1) or True)

    def warning(parent, title, text):  # a second error while the first message is open: counted only
        shown.append(text)
        hook(*_raise_inside())

    monkeypatch.setattr(QMessageBox, "warning", staticmethod(warning))
    previous = sys.excepthook
    hook.install()
    try:
        assert sys.excepthook is hook
        sys.excepthook(*_raise_inside())
    finally:
        hook.uninstall()
    assert sys.excepthook is previous
    assert len(shown) == 1 and "KeyError: 'missing'" in shown[0] and "autosaved" in shown[0]
    assert len(hook.reports) == 2 and saves == [1, 1]
    report = open(hook.reports[0], encoding="utf-8").read()
    assert str(tmp_path) in hook.reports[0] and "Traceback" in report and "_raise_inside" in report
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and hook.reports[0] in err and "Traceback" not in err


def test_a_failing_save_does_not_hide_the_error(qtbot, monkeypatch) -> None:
    window = QWidget()
    qtbot.addWidget(window)
    shown = []
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(lambda parent, title, text: shown.append(text)))

    def broken_save():
        raise OSError("disk full")

    hook = WindowErrorHook(window, save_work=broken_save)
    hook.install()
    try:
        sys.excepthook(*_raise_inside())
    finally:
        hook.uninstall()
    assert len(shown) == 1 and "autosaved" not in shown[0]
