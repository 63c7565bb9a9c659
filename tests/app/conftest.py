import gc
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display in CI

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402


@pytest.fixture(autouse=True)
def _user_files_in_tmp(tmp_path):
    """Recent projects, layout and the autosave (which sits beside the settings) stay out of the
    real user's folder, for tests that do not choose a folder themselves."""
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "user-settings"))


@pytest.fixture(autouse=True)
def _no_modal_questions(monkeypatch):
    """A window with unsaved changes asks before it closes; pytest-qt closes every window at a
    test's end, where a real modal question would wait forever.  Tests that check the question
    patch ``QMessageBox.question`` themselves (their patch is applied after this one)."""
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Collect each test's cyclic garbage (closed windows, their Qt wrappers) once its fixtures are
    torn down and no worker runs, instead of wherever the collector next fires, which could be in
    the middle of a later test while a worker loads a model (the process segfaulted there)."""
    yield
    gc.collect()
