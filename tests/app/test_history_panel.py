"""The History tab driven as a user would: runs listed and overlaid, a rank study queued by clicking."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from short_runs import short_digits

from lora_studio.app.panels.history_panel import RANK_CHART, HistoryPanel
from lora_studio.app.state.run_controller import RunController
from lora_studio.app.state.session import StudioSession

SCREENSHOTS = Path("/tmp/w2")
RUN_TIMEOUT_MS = 120_000  # several short runs on two shared CPU cores


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def _panel(qtbot, session: StudioSession, settings: QSettings) -> HistoryPanel:
    panel = HistoryPanel(session, settings=settings)
    qtbot.addWidget(panel)
    panel.resize(1100, 700)
    panel.show()
    return panel


def test_runs_are_listed_overlaid_and_remembered(qtbot, tmp_path, settings) -> None:
    session = StudioSession()
    panel = _panel(qtbot, session, settings)
    controller = RunController.for_session(session)
    for name, r in (("a", 2), ("b", 8)):
        config = short_digits(tmp_path / name, steps=4, eval_every=2)
        with qtbot.waitSignal(controller.sig_run_finished, timeout=RUN_TIMEOUT_MS):
            controller.start(config.replace(lora=config.lora.replace(r=r)))
    assert [(run.name, run.setup, run.status) for run in panel.runs()] == [
        ("a", "LoRA r=2", "finished"), ("b", "LoRA r=8", "finished")]
    panel.set_compared([tmp_path / "a", tmp_path / "b"])
    legend = panel.comparison_legend()
    assert len(legend) == 2 and "r=2" in legend[0] and "r=8" in legend[1]
    assert len(panel.plot.listDataItems()) == 2
    panel.table.setCurrentItem(panel.table.topLevelItem(1))
    assert "r = 8" in panel.config_view.toPlainText()
    again = _panel(qtbot, StudioSession(), settings)  # the next session lists the same runs
    assert [run.run_dir for run in again.runs()] == [(tmp_path / n).resolve() for n in ("a", "b")]
    again.table.topLevelItem(0).setSelected(True)
    again.remove_selected()
    assert [run.name for run in again.runs()] == ["b"]


def test_a_rank_study_queued_by_clicking_compares_its_runs(qtbot, tmp_path, settings) -> None:
    session = StudioSession(short_digits(tmp_path / "demo", steps=4, eval_every=2))
    panel = _panel(qtbot, session, settings)
    panel.versus_button.click()  # LoRA vs full: the current rank plus full fine-tuning
    dialog = panel.study_dialog
    assert dialog is not None and dialog.full_check.isChecked()
    dialog.ranks_edit.setText("2, x")
    assert not dialog.buttons.buttons()[0].isEnabled() and "'x'" in dialog.message.text()
    dialog.ranks_edit.setText("")
    dialog.full_check.setChecked(False)
    dialog.head_check.setChecked(True)
    assert dialog.buttons.buttons()[0].isEnabled()  # a head-only baseline alone is a study too
    dialog.full_check.setChecked(True)
    dialog.ranks_edit.setText("2, 8")
    with qtbot.waitSignal(panel.queue.sig_batch_finished, timeout=RUN_TIMEOUT_MS) as batch:
        dialog.accept()
        assert panel.queue_label.text() == "Queue: 3 waiting"
    study = tmp_path / "demo-study"
    assert batch.args[0] == [study / "r2", study / "r8", study / "full", study / "head"]
    compared = panel.compared()
    assert [run.setup for run in compared] == ["LoRA r=2", "LoRA r=8", "full", "head only"]
    assert all(run.status == "finished" for run in compared)
    trainable = [run.trainable for run in compared]
    # the head alone trains least; full fine-tuning trains every weight
    assert trainable[3] < trainable[0] < trainable[1] < trainable[2] == compared[2].result["total_parameters"]
    legend = panel.comparison_legend()
    assert len(legend) == 4
    assert [f"{n:,} trainable" in entry for n, entry in zip(trainable, legend, strict=True)] == [True] * 4
    # A finished study shows its summary: final result against rank (the two LoRA runs as points,
    # full fine-tuning as a line across), then the curves are one choice away.
    assert panel.metric_box.currentIndex() == RANK_CHART and "against rank, 4 runs" in panel.plot_title_text()
    items = panel.plot.items if isinstance(panel.plot.items, list) else panel.plot.getPlotItem().items
    lines = [str(getattr(item.label, "format", "")) for item in items if type(item).__name__ == "InfiniteLine"]
    assert any(text.startswith("full fine-tuning") for text in lines) and any(t.startswith("head only") for t in lines)
    SCREENSHOTS.mkdir(exist_ok=True)
    panel.grab().save(str(SCREENSHOTS / "history_rank_chart.png"))
    panel.metric_box.setCurrentIndex(0)
    assert len(panel.plot.listDataItems()) == 4 and panel.plot_title_text() == "Validation loss of 4 runs"
    assert panel.queue_label.text() == "Queue: empty" and not panel.queue.is_busy()
    SCREENSHOTS.mkdir(exist_ok=True)
    panel.grab().save(str(SCREENSHOTS / "history_panel.png"))


def test_the_queue_waits_for_a_run_already_going(qtbot, tmp_path, settings) -> None:
    session = StudioSession()
    panel = _panel(qtbot, session, settings)
    controller = RunController.for_session(session)
    controller.start(short_digits(tmp_path / "mine", steps=6, eval_every=0))
    with qtbot.waitSignal(panel.queue.sig_batch_finished, timeout=RUN_TIMEOUT_MS) as batch:
        panel.queue_study([2], base=short_digits(tmp_path / "queued", steps=3, eval_every=0))
        assert controller.config.output.dir == str(tmp_path / "mine")  # not interrupted
    assert batch.args[0] == [tmp_path / "queued-study" / "r2"]



def test_a_run_into_a_folder_another_process_holds_fails_by_name_and_the_queue_goes_on(
        qtbot, tmp_path, settings) -> None:
    import subprocess
    import sys

    session = StudioSession()
    panel = _panel(qtbot, session, settings)
    controller = RunController.for_session(session)
    held = tmp_path / "terminal-run"  # e.g. a `lora-studio train` the user started in a terminal
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lora_studio.core.training.run_folder import RunFolderLock; "
         "lock = RunFolderLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); sys.stdin.read()", str(held)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with qtbot.waitSignal(controller.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
            controller.start(short_digits(held, steps=3, eval_every=0))
        result = finished.args[0]
        assert result.status == "failed" and f"process {holder.pid}" in result.error
        assert not (held / "run.toml").exists()  # nothing written into the folder another run holds
        with qtbot.waitSignal(panel.queue.sig_batch_finished, timeout=RUN_TIMEOUT_MS) as batch:
            panel.queue_study([2], base=short_digits(tmp_path / "queued", steps=3, eval_every=0))
        assert (batch.args[0][0] / "adapter").is_dir()
    finally:
        holder.kill()
        holder.wait()
