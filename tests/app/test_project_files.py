"""Projects: save, reopen, same selection; recent projects; a bad file is refused with its message."""

from __future__ import annotations

from studio_window import LOAD_TIMEOUT_MS, isolated_settings, open_digits_window

from lora_studio.app.main_window import MainWindow
from lora_studio.app.state.project_files import StudioSettings
from lora_studio.core import RunConfig


def test_save_and_reopen_gives_the_same_selection(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tree = window.layer_tree
    tree.set_ticked(["conv2", "fc1"])
    tree.highlight(["conv2"])
    tree.rank_spin.setValue(8)
    tree.set_layer_values(tree.highlighted_layers())
    window.settings_panel.row("training.max_steps").set_text("40")
    saved = window.save_project_file(tmp_path / "digits-project")
    assert saved == tmp_path / "digits-project.toml" and "digits-project.toml" in window.windowTitle()
    assert RunConfig.load(saved) == window.session.config  # the TOML is the whole project

    other = MainWindow()  # a second window, as after a restart
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        assert other.open_project_file(saved) is None
    assert other.layer_tree.ticked_layers() == ["conv2", "fc1"]
    assert other.session.tree.find("conv2").rank == 8
    assert other.settings_panel.row("training.max_steps").editor.text() == "40"
    window.counts_panel.wait_until_current()
    other.counts_panel.wait_until_current()
    assert other.counts_panel.estimate == window.counts_panel.estimate
    assert StudioSettings().recent_projects()[0] == str(saved.resolve())
    assert [a.text() for a in other.recent_menu.actions()][0] == "digits-project.toml"


def test_a_bad_project_is_refused_with_its_message(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nsource = \"demo\"\nname = \"digits\"\n[data]\nkind = \"digits\"\n[lora]\nr = 0\n")
    assert window.open_project_file(bad) == f"run config {bad}: r must be an integer >= 1, got 0"
    bad.write_text("[lora]\nr = 4\n")  # no model, no data: refused, not the digits demo in disguise
    assert "has no [model] and [data] tables" in window.open_project_file(bad)
    assert window.open_project_file(tmp_path / "missing.toml").endswith("does not exist")
    assert window.session.project_path is None


def test_settings_remember_theme_and_folders(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    window.set_theme("dark")
    settings = StudioSettings()
    settings.set_last_folder("data", str(tmp_path))
    settings.sync()
    again = StudioSettings()
    assert again.theme() == "dark" and again.last_folder("data") == str(tmp_path)
    window.set_theme("light")
