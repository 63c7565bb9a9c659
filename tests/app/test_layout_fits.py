"""The window fits a 1366x768 screen (and its minimum a 1280x720 one) with every tab shown and a
rank study opened, every setting stays reachable, the layout persists, and the small looks
items: a title without the doubled name, Help → About and the keyboard shortcuts, visible check
boxes in the dark theme."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtWidgets import QApplication, QCheckBox
from studio_window import LOAD_TIMEOUT_MS, isolated_settings

import lora_studio.core
from lora_studio.app.main_window import MainWindow, window_title
from lora_studio.app.theme import apply_theme

SCREEN = (1366, 768)
SMALLEST = (1280, 720)


def _window(qtbot, tmp_path, demo: str = "digits") -> MainWindow:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    window.setWindowState(Qt.WindowState.WindowNoState)  # the offscreen screen is small: it starts maximized
    window.resize(*SCREEN)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS * 3):
        window.model_panel.open_demo(demo)
    return window


def _visit_everything(qtbot, window: MainWindow) -> None:
    """Every tab shown once, and a rank study dialog opened and closed: each grew the minimum before."""
    for index in range(window.tabs.count()):
        window.tabs.setCurrentIndex(index)
        qtbot.wait(20)
    dialog = window.history_panel.open_rank_study()
    qtbot.wait(20)
    dialog.reject()
    window.tabs.setCurrentIndex(0)
    qtbot.wait(20)


def _assert_fits(window: MainWindow) -> None:
    hint = window.minimumSizeHint()
    assert hint.width() <= SMALLEST[0] and hint.height() <= SMALLEST[1], hint
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1]


def _assert_every_setting_reachable(qtbot, window: MainWindow) -> None:
    panel = window.settings_panel
    viewport = panel.scroll.viewport()
    keys = [k for k in panel.rows if k.startswith(("lora.", "training."))]
    assert {"lora.r", "lora.alpha", "training.lr", "training.max_steps", "training.batch_size",
            "training.grad_accumulation", "training.precision", "training.device"} <= set(keys)
    dock = window.settings_dock
    assert dock.isVisible() and QRect(QPoint(0, 0), window.size()).contains(dock.geometry())
    for key in keys:
        row = panel.reveal(key)
        qtbot.wait(5)
        editor = row.editor
        top_left = editor.mapTo(viewport, QPoint(0, 0))
        inside = QRect(top_left, editor.size())
        assert editor.isVisible() and viewport.rect().contains(inside), (key, inside, viewport.rect())
        assert editor.width() >= 40, key  # a field one can type into, not a sliver


def test_the_window_fits_1366x768_with_every_tab_and_a_rank_study(qtbot, tmp_path) -> None:
    window = _window(qtbot, tmp_path)
    _visit_everything(qtbot, window)
    _assert_fits(window)
    _assert_every_setting_reachable(qtbot, window)
    window.resize(*SMALLEST)
    qtbot.wait(20)
    assert (window.width(), window.height()) == SMALLEST  # nothing holds it wider
    _assert_every_setting_reachable(qtbot, window)


def test_the_window_fits_with_a_transformers_model(qtbot, tmp_path) -> None:
    pytest.importorskip("transformers")
    window = _window(qtbot, tmp_path, demo="text")
    _visit_everything(qtbot, window)
    _assert_fits(window)
    _assert_every_setting_reachable(qtbot, window)


def _reopened(qtbot, window: MainWindow) -> MainWindow:
    window.save_layout()  # what closing the window does (closeEvent)
    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    qtbot.waitExposed(again)
    return again


def test_the_layout_is_remembered(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    first = MainWindow()
    qtbot.addWidget(first)
    first.setWindowState(Qt.WindowState.WindowNoState)
    # The offscreen screen is 800 px wide and Qt keeps a restored window on its screen: a window at
    # its minimum width comes back at the same width, so the splitter's sizes can be compared.
    first.resize(first.minimumSizeHint().width(), 640)
    first.show()
    qtbot.waitExposed(first)
    total = sum(first.central_splitter.sizes())
    first.central_splitter.setSizes([total - 380, 380])
    qtbot.wait(20)
    sizes = first.central_splitter.sizes()
    second = _reopened(qtbot, first)
    assert (second.width(), second.height()) == (first.width(), 640)
    assert second.settings.window_state()[0] == first.saveGeometry()
    assert [abs(a - b) <= 2 for a, b in zip(second.central_splitter.sizes(), sizes, strict=True)] == [True, True]
    assert second.settings_dock.isVisible()
    second.settings_dock.hide()  # View → Settings unticked
    third = _reopened(qtbot, second)
    assert not third.settings_dock.isVisible()


def test_the_title_names_the_project_once() -> None:
    assert window_title(None) == "Untitled — LoRA Studio"
    assert window_title("project1.toml") == "project1.toml — LoRA Studio"
    assert window_title("project1.toml", modified=True) == "*project1.toml — LoRA Studio"
    # Qt appends the application's display name to a title that does not end with it: this one does.
    assert window_title("project1.toml").endswith("LoRA Studio") and window_title("x").count("LoRA Studio") == 1


def test_help_about_and_shortcuts(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    menus = [action.text() for action in window.menuBar().actions()]
    assert menus[-1] == "&Help"
    box = window.show_about()
    text = box.text()
    assert f"LoRA Studio {lora_studio.core.__version__}" in text
    assert "Qt" in text and "PyTorch" in text and "README" in text
    box.close()
    shortcuts = dict(window.keyboard_shortcuts())
    assert {"Save project", "Open project", "Start", "Load model"} <= set(shortcuts)
    box = window.show_shortcuts()
    assert "Start" in box.text()
    box.close()


def test_dark_theme_check_boxes_show_when_unticked(qtbot) -> None:
    app = QApplication.instance()
    box = QCheckBox()
    qtbot.addWidget(box)
    box.resize(24, 24)
    try:
        apply_theme(app, "dark")
        box.show()
        qtbot.waitExposed(box)
        image = box.grab().toImage()
        background = app.palette().window().color().lightness()
        brightest = max(image.pixelColor(x, y).lightness() for x in range(image.width()) for y in range(image.height()))
        assert brightest - background >= 60  # an edge one can see on the dark window
    finally:
        apply_theme(app, "light")
