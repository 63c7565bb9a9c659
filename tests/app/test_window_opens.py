"""The window opens offscreen with every panel in place."""

from lora_studio.app.main_window import MainWindow


def test_main_window_has_its_panels(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    for name in ("model_panel", "layer_tree", "settings_panel", "counts_panel", "run_panel"):
        assert getattr(window, name).isVisible(), name
    tabs = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    assert tabs == ["Train", "Try", "Adapters", "Data", "History"]
