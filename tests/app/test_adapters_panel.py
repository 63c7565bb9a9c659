"""The Adapters tab in the window: two adapter folders opened from disk, listed with their facts,
switched, one for another base refused, two combined and the result exported merged and checked;
the chosen adapter handed to the Try tab; the run just trained listed by itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent

from lora_studio.app.dialogs.export_dialog import TOLERANCE
from lora_studio.app.panels.adapters_panel import COLUMNS, AdaptersPanel
from lora_studio.app.state.adapter_library import THIS_RUN
from lora_studio.app.state.run_controller import RunController
from lora_studio.app.state.try_sources import OPENED
from lora_studio.core import active_adapter, load_weights

from short_runs import short_digits
from studio_window import open_digits_window
from test_adapters_folders import (
    TOLERANCE as SAME,
    base_output,
    digits_session,
    other_base_adapter,
    own_output,
    pixels,
    saved_adapter,
)

JOB_MS = 30_000


def _wait(qtbot, panel: AdaptersPanel) -> None:
    qtbot.waitUntil(lambda: not panel.library.is_busy(), timeout=JOB_MS)


def _rows(panel: AdaptersPanel) -> list[dict[str, str]]:
    tree = panel.tree
    return [{c: tree.topLevelItem(i).text(j) for j, c in enumerate(COLUMNS)} for i in range(tree.topLevelItemCount())]


def _output(panel: AdaptersPanel, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return panel.library.loaded().model.eval()(inputs)


def _drop(panel: AdaptersPanel, *paths: Path) -> None:
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(QPoint(5, 5), Qt.DropAction.CopyAction, data, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    panel.dropEvent(event)


def test_open_switch_refuse_combine_and_export_merged_in_the_window(qtbot, tmp_path: Path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    panel = window.adapters_panel
    window.tabs.setCurrentWidget(panel)
    assert window.tabs.tabText(window.tabs.indexOf(panel)) == "Adapters"
    assert panel.empty_label.isVisible() and not panel.open_button.isHidden()
    sentiment = saved_adapter(tmp_path / "adapters" / "sentiment", seed=1)
    topic = saved_adapter(tmp_path / "adapters" / "topic", seed=2)

    # Two folders from disk, dropped on the tab: each listed with its facts, the first active.
    _drop(panel, sentiment, topic)
    _wait(qtbot, panel)
    rows = _rows(panel)
    assert [r["Name"] for r in rows] == ["● sentiment", "topic"]
    assert [r["From"] for r in rows] == [str(sentiment), str(topic)]
    assert all(r["Variant"] == "LoRA" and r["Rank"] == "4" and r["Targets"] == "conv1, conv2, fc1" for r in rows)
    assert rows[0]["Size"].endswith("KiB") and not panel.empty_label.isVisible()
    assert panel.status_label.text() == "Opened sentiment, topic"

    # Activate switches outputs: the model answers as each adapter does on its own; Disable all as the base.
    inputs = pixels()
    panel.select("topic")
    panel.activate_button.click()
    _wait(qtbot, panel)
    assert _rows(panel)[1]["Name"] == "● topic"
    assert (_output(panel, inputs) - own_output(topic, inputs)).abs().max() <= SAME
    panel.disable_button.click()
    _wait(qtbot, panel)
    assert (_output(panel, inputs) - base_output(inputs)).abs().max() <= SAME
    assert "none active" in panel.header_label.text()
    panel.select("sentiment")
    panel.activate_button.click()
    _wait(qtbot, panel)
    assert (_output(panel, inputs) - own_output(sentiment, inputs)).abs().max() <= SAME

    # An adapter for another base: refused with the reason, the list and the model unchanged.
    before_rows, before = _rows(panel), _output(panel, inputs)
    panel.open_folders([other_base_adapter(tmp_path / "adapters" / "mlp")])
    _wait(qtbot, panel)
    assert panel.notice.isVisible() and "no module '0'" in panel.notice.label.text()
    assert _rows(panel) == before_rows and torch.equal(_output(panel, inputs), before)

    # Combine the two, linear with weights 1 and 0: the new adapter answers as the first.
    panel.select("sentiment", "topic")
    dialog = panel.open_combine_dialog()
    assert dialog is not None and dialog.names == ["sentiment", "topic"]
    dialog.set_method("ties")
    assert not dialog.form.isRowVisible(dialog.svd_rank) and dialog.form.isRowVisible(dialog.density)
    dialog.set_method("linear")
    assert not dialog.form.isRowVisible(dialog.density) and not dialog.form.isRowVisible(dialog.majority_sign)
    dialog.weights["sentiment"].setValue(1.0)
    dialog.weights["topic"].setValue(0.0)
    dialog.new_name.setText("mix")
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    _wait(qtbot, panel)
    mix = _rows(panel)[-1]
    assert mix["Name"] == "mix" and mix["From"] == "combined from sentiment, topic (linear 1, 0)"

    # Export merged: the export dialog opens on the model with "mix" active; its merged export is checked.
    panel.select("mix")
    panel.export_button.click()
    qtbot.waitUntil(lambda: panel.export_dialog is not None, timeout=JOB_MS)
    export = panel.export_dialog
    assert export.adapter_name == "mix" and active_adapter(panel.library.loaded().model) == "mix"
    assert (_output(panel, inputs) - own_output(sentiment, inputs)).abs().max() <= 1e-5
    default = Path(window.session.config.output.dir) / "export" / "mix-merged.safetensors"
    assert export.merged_path.text() == str(default)  # the chosen adapter's own default name
    merged = tmp_path / "export" / "mix-merged.safetensors"  # not the user's app-data folder
    export.merged_path.setText(str(merged))
    with qtbot.waitSignal(export.sig_exported, timeout=JOB_MS) as exported:
        export.merged_button.click()
    qtbot.waitUntil(lambda: not export.is_busy(), timeout=JOB_MS)
    check = exported.args[0]
    assert check.path == merged and merged.is_file()
    assert check.within_tolerance and check.difference <= TOLERANCE["float32"]
    # The merged weights are the base's plus mix's update: run in a plain copy of the base they answer as mix.
    plain = type(window.session.loaded.model)()
    plain.load_state_dict(load_weights(merged))
    with torch.no_grad():
        assert (plain.eval()(inputs) - own_output(sentiment, inputs)).abs().max() <= 1e-4
    export.reject()

    # Try: the Try tab tries the model with the chosen adapter active.
    panel.select("topic")
    panel.try_button.click()
    qtbot.waitUntil(lambda: window.tabs.currentWidget() is window.try_panel, timeout=JOB_MS)
    source = window.try_panel.runner.current()
    assert source.kind == OPENED and source.loaded is panel.library.loaded() and "topic active" in source.title
    assert active_adapter(source.loaded.model) == "topic"
    # A switch in the Adapters tab: the Try tab's line says which adapter it answers with now.
    window.tabs.setCurrentWidget(panel)
    panel.select("sentiment")
    panel.activate_button.click()
    _wait(qtbot, panel)
    assert "sentiment active" in window.try_panel.runner.current().title

    # Delete: gone from the list and the model.
    panel.select("mix")
    panel.delete_button.click()
    _wait(qtbot, panel)
    assert [r["Name"] for r in _rows(panel)] == ["● sentiment", "topic"]

    # A folder dropped on the window (not the tab) opens here too, under a name not yet taken.
    window.tabs.setCurrentWidget(window.data_panel)
    assert window.handle_drop(sentiment) == "Opening the adapters in sentiment"
    assert window.tabs.currentWidget() is panel
    _wait(qtbot, panel)
    assert [r["Name"] for r in _rows(panel)] == ["● sentiment", "topic", "sentiment-2"]
    window.close()


def test_the_run_just_trained_appears_by_itself(qtbot, tmp_path: Path) -> None:
    session = digits_session(tmp_path / "runs")
    controller = RunController.for_session(session)
    panel = AdaptersPanel(session)
    qtbot.addWidget(panel)
    panel.show()
    run_dir = tmp_path / "runs" / "digits-short"
    with qtbot.waitSignal(panel.library.sig_changed, timeout=60_000):
        controller.start(short_digits(run_dir, steps=5))
    _wait(qtbot, panel)
    (row,) = _rows(panel)
    assert (row["Name"], row["From"], row["Run"]) == ("● digits-short", THIS_RUN, "digits-short")
    assert panel.tree.topLevelItem(0).toolTip(COLUMNS.index("Run")) == str(run_dir)
    controller.stop_and_wait()
    assert panel.wait_idle()


@pytest.mark.parametrize("doing", ["activate", "rename", "save", "export", "try"])
def test_actions_on_one_adapter_ask_for_one(qtbot, tmp_path: Path, doing: str) -> None:
    panel = AdaptersPanel(digits_session(tmp_path / "runs"))
    qtbot.addWidget(panel)
    assert not panel.activate_button.isEnabled()  # nothing chosen: greyed
    action = {"activate": panel.activate_selected, "rename": lambda: panel.rename_selected("x"),
              "save": lambda: panel.save_selected(tmp_path), "export": panel.export_selected,
              "try": panel.try_selected}[doing]
    assert action() is None
    assert panel.notice.label.text() == f"Choose one adapter to {doing} in the list"


def test_the_combine_form_shows_the_engines_reason_and_the_method_that_works(qtbot, tmp_path: Path) -> None:
    panel = AdaptersPanel(digits_session(tmp_path / "runs"))
    qtbot.addWidget(panel)
    panel.open_folders([saved_adapter(tmp_path / "r4", seed=1), saved_adapter(tmp_path / "r2", seed=2, rank=2)])
    _wait(qtbot, panel)
    panel.select("r4", "r2")
    dialog = panel.open_combine_dialog()
    combine = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    dialog.set_method("linear")
    assert not combine.isEnabled() and "needs equal ranks" in dialog.problem_label.text()
    assert "'svd'" in dialog.problem_label.text()  # the method that would work
    dialog.set_method("svd")
    assert combine.isEnabled() and dialog.problem_label.isHidden()
    assert dialog.form.isRowVisible(dialog.svd_rank) and not dialog.form.isRowVisible(dialog.density)
    dialog.new_name.setText("r4")
    assert not combine.isEnabled() and "already" in dialog.problem_label.text()
    dialog.new_name.setText("both")
    combine.click()
    _wait(qtbot, panel)
    assert _rows(panel)[-1]["Name"] == "both" and _rows(panel)[-1]["Rank"] == "4"  # svd at the largest rank
    assert panel.wait_idle()


def test_adapters_with_trained_heads_combine_heads_too(qtbot, tmp_path: Path) -> None:
    panel = AdaptersPanel(digits_session(tmp_path / "runs"))
    qtbot.addWidget(panel)
    first = saved_adapter(tmp_path / "rotate", seed=1, head=True)
    panel.open_folders([first, saved_adapter(tmp_path / "mirror", seed=2, head=True)])
    _wait(qtbot, panel)
    assert "fc2 (full)" in panel.library.entries()[0].targets
    panel.select("rotate", "mirror")
    dialog = panel.open_combine_dialog()
    assert dialog.whole_modules.isVisibleTo(dialog) and dialog.whole_modules.isChecked()
    dialog.set_method("linear")
    dialog.whole_modules.setChecked(False)
    assert "modules_to_save" in dialog.problem_label.text()  # the engine refuses them without it
    dialog.whole_modules.setChecked(True)
    dialog.weights["rotate"].setValue(1.0)
    dialog.weights["mirror"].setValue(0.0)
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    _wait(qtbot, panel)
    assert _rows(panel)[-1]["From"] == "combined from rotate, mirror (linear 1, 0, trained modules too)"
    panel.select("combined")
    panel.rename_selected("rotate-heavy")
    _wait(qtbot, panel)
    assert panel.selected_names() == ["rotate-heavy"] and _rows(panel)[-1]["Name"] == "rotate-heavy"
    panel.activate_button.click()
    _wait(qtbot, panel)
    inputs = pixels()
    assert (_output(panel, inputs) - own_output(first, inputs)).abs().max() <= 1e-5
    assert panel.wait_idle()
