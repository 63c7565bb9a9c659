"""Resume and extend from the window, and what a run says when it ends (issue 12, items 5, 6, 13).

Resume from the window is the CLI's resume: both call ``resume_run`` on the same run folder,
so a run stopped from the Train tab and resumed there ends with exactly the weights that
``lora-studio resume`` gives a copy of that folder, and (the engine's bit-identical resume)
the weights of a run that was never stopped, within 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QSettings, Qt
from safetensors.torch import load_file
from short_runs import missing_data, short_digits, shown_run_panel
from studio_window import open_digits_window

from lora_studio.app.dialogs.export_dialog import ExportDialog
from lora_studio.app.panels.history_panel import HistoryPanel
from lora_studio.app.panels.run_panel import RunPanel
from lora_studio.app.state.run_summary import earlier_events, folder_bytes, run_continuation
from lora_studio.app.state.session import StudioSession
from lora_studio.core import (
    CancelToken,
    StepMetrics,
    cli_main,
    latest_checkpoint,
    read_metrics,
    train,
)

RUN_TIMEOUT_MS = 90_000  # shared CPU cores: generous, each run takes seconds


@pytest.fixture
def session():
    return StudioSession()


@pytest.fixture
def panel(qtbot, session):
    widget = shown_run_panel(qtbot, session)
    yield widget
    widget.stop_and_wait(RUN_TIMEOUT_MS)


def _with_dropout(config):
    """Adapter dropout on, so the resumed run's random state has to be right too."""
    return config.replace(lora=dataclasses.replace(config.lora, dropout=0.1))


def _hold_at(monkeypatch, steps: int) -> None:
    """The window's next run holds (paused, on its own thread) once it has done ``steps`` steps, so a
    Stop pressed after the UI shows them lands at exactly that step, however loaded the machine."""
    import lora_studio.app.state.run_controller as run_controller

    def held_train(config, on_event, cancel, **options):
        def watch(event):
            on_event(event)
            if isinstance(event, StepMetrics) and event.step == steps:
                cancel.pause()  # Stop (cancel) wakes it to end after this step

        return train(config, watch, cancel, **options)

    monkeypatch.setattr(run_controller, "train", held_train)


def _stop_after(panel: RunPanel, qtbot, steps: int):
    """Press Stop once the run has done ``steps`` steps (held there by ``_hold_at``); the run's TrainResult."""
    qtbot.waitUntil(lambda: panel.progress.value() >= steps, timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.stop_button.click()
    return finished.args[0]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _steps_logged(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if r["event"] == "StepMetrics"]


def _plot_steps(panel: RunPanel, name: str) -> list[float]:
    xs, _ = panel.plots.series[name].arrays()
    return [float(x) for x in xs]


def test_resume_from_the_window_equals_the_cli_resume_and_an_uninterrupted_run(panel, qtbot, tmp_path,
                                                                              monkeypatch) -> None:
    steps = 30
    reference = tmp_path / "reference"
    assert train(_with_dropout(short_digits(reference, steps=steps))).status == "finished"

    run = tmp_path / "run"
    _hold_at(monkeypatch, 6)
    panel.start_run(_with_dropout(short_digits(run, steps=steps)))
    stopped = _stop_after(panel, qtbot, 6)
    assert stopped.status == "cancelled" and stopped.steps == 6, stopped
    assert panel.summary_card.isVisible() and panel.summary_card.resume_button.isVisible()
    assert not panel.summary_card.extend_button.isVisible()
    cli_copy = tmp_path / "cli-copy"
    shutil.copytree(run, cli_copy)

    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(panel.summary_card.resume_button, Qt.MouseButton.LeftButton)
    resumed = finished.args[0]
    assert resumed.status == "finished" and resumed.steps == steps
    assert cli_main(["resume", str(cli_copy), "--quiet"]) == 0

    window, cli, uninterrupted = _final_weights(run), _final_weights(cli_copy), _final_weights(reference)
    assert window.keys() == cli.keys() == uninterrupted.keys()
    for key in window:
        assert torch.equal(window[key], cli[key]), f"{key}: the window's resume differs from the CLI's"
        assert torch.allclose(window[key], uninterrupted[key], rtol=0, atol=1e-6), f"{key} differs from the reference"
    last_eval = [r for r in read_metrics(run) if r["event"] == "EvalMetrics"][-1]
    cli_eval = [r for r in read_metrics(cli_copy) if r["event"] == "EvalMetrics"][-1]
    assert last_eval["step"] == cli_eval["step"] == steps and last_eval["loss"] == cli_eval["loss"]
    # The curve continued: every step once, the stopped part's points drawn before the new ones.
    assert _plot_steps(panel, "raw") == [float(s) for s in range(1, steps + 1)]
    assert _plot_steps(panel, "val_loss") == [0.0, 10.0, 20.0, 30.0]
    assert f"continuing from the checkpoint at step {stopped.steps}" in panel.log_text()


def test_extend_adds_exactly_n_steps_and_the_curve_continues(panel, qtbot, tmp_path) -> None:
    run = tmp_path / "run"
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS):
        panel.start_run(short_digits(run, steps=12, eval_every=6))
    card = panel.summary_card
    assert card.extend_button.isVisible() and not card.resume_button.isVisible()
    card.extend_steps.setValue(8)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        qtbot.mouseClick(card.extend_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    assert result.status == "finished" and result.steps == result.total_steps == 20
    assert _steps_logged(run) == list(range(1, 21))  # 12, then exactly 8 more, none twice
    assert panel.progress.maximum() == 20 and panel.progress.value() == 20
    assert _plot_steps(panel, "raw") == [float(s) for s in range(1, 21)]
    evals = _plot_steps(panel, "val_loss")
    assert [s for s in evals if s <= 12] == [0.0, 6.0, 12.0] and [s for s in evals if s > 12] == [18.0, 20.0]
    assert card.isVisible() and "20/20 steps" in card.headline.text()


def test_the_summary_card_shows_the_values_metrics_jsonl_holds(panel, qtbot, tmp_path) -> None:
    run = tmp_path / "run"
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(short_digits(run, steps=20))
    result = finished.args[0]
    evals = [r for r in read_metrics(run) if r["event"] == "EvalMetrics"]
    base, last = evals[0], evals[-1]
    assert base["step"] == 0 and last["step"] == 20
    summary = panel.last_summary()
    assert summary.before.step == 0 and summary.before.accuracy == base["accuracy"]
    assert summary.before.loss == base["loss"]
    assert summary.after.step == 20 and summary.after.accuracy == last["accuracy"]
    assert summary.best_step == result.best_step and summary.best_loss == result.best_eval_loss
    assert summary.adapter_bytes == sum(p.stat().st_size for p in (run / "adapter").iterdir())
    finished_records = [r for r in read_metrics(run) if r["event"] == "Finished"]
    assert summary.seconds == pytest.approx(finished_records[-1]["result"]["seconds"], abs=1e-9)
    card = panel.summary_card
    assert card.isVisible()
    metrics_text = card.metrics_label.text()
    assert f"{base['accuracy']:.1%} → {last['accuracy']:.1%}" in metrics_text, metrics_text
    assert f"best step {result.best_step}" in metrics_text
    assert "Adapter" in card.files_label.text() and str(run) in card.files_label.text()
    assert card.headline.text().startswith("✔ Run finished — 20/20 steps")
    with qtbot.waitSignal(panel.sig_export_requested, timeout=1_000):
        card.export_button.click()
    with qtbot.waitSignal(panel.sig_compare_requested, timeout=1_000) as compare:
        card.compare_button.click()
    assert Path(compare.args[0]) == run
    panel.grab().save(str(tmp_path / "card.png"))


def test_eta_is_hidden_while_paused(panel, qtbot, tmp_path) -> None:
    panel.start_run(short_digits(tmp_path / "run", steps=500, eval_every=0))
    qtbot.waitUntil(lambda: panel.progress.value() >= 3, timeout=RUN_TIMEOUT_MS)
    assert "ETA" in panel.stats_label.text()
    panel.pause_button.click()
    qtbot.wait(500)  # the step in progress lands while paused: its line must not bring the ETA back
    assert "ETA" not in panel.stats_label.text() and "paused" in panel.stats_label.text()
    panel.pause_button.click()
    held = panel.progress.value()
    qtbot.waitUntil(lambda: panel.progress.value() > held, timeout=RUN_TIMEOUT_MS)
    assert "ETA" in panel.stats_label.text()


def test_a_failure_replaces_the_preparing_line_with_its_message(panel, qtbot, tmp_path) -> None:
    seen = []  # the line when the failure is reported, before the run's end
    panel.sig_error.connect(lambda message, details: seen.append(panel.stats_label.text()))
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(missing_data(tmp_path / "run"))
        assert panel.stats_label.text() == "Preparing the model and data…"
    assert len(seen) == 1 and seen[0].startswith("✖ Failed:") and "missing.csv" in seen[0], seen
    result = finished.args[0]
    assert result.status == "failed"
    text = panel.stats_label.text()
    assert "Preparing" not in text and text == "✖ Failed at step 0/5", text
    card = panel.summary_card  # the message, once, where the run's summary is
    assert card.isVisible() and card.headline.text().startswith("✖ Run failed")
    assert "missing.csv" in card.headline.text()
    assert not card.resume_button.isVisible() and not card.extend_button.isVisible()  # no checkpoint to go on from
    assert not card.export_button.isEnabled()


def test_a_run_end_notifies_when_the_window_is_not_active(qtbot, session, tmp_path) -> None:
    hidden = RunPanel(session)  # never shown, so never the active window
    qtbot.addWidget(hidden)
    with qtbot.waitSignal(hidden.sig_run_finished, timeout=RUN_TIMEOUT_MS):
        hidden.start_run(short_digits(tmp_path / "run", steps=4, eval_every=0))
    title, text = hidden.last_notice
    assert title == "LoRA Studio: finished" and text.startswith("run: 4/4 steps")


def test_history_menu_resumes_a_stopped_run_and_extends_a_finished_one(panel, session, qtbot, tmp_path,
                                                                       monkeypatch) -> None:
    history = HistoryPanel(session, settings=QSettings(str(tmp_path / "history.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(history)
    run = tmp_path / "run"
    _hold_at(monkeypatch, 3)
    panel.start_run(short_digits(run, steps=40, eval_every=0))
    qtbot.waitUntil(lambda: panel.progress.value() >= 2, timeout=RUN_TIMEOUT_MS)
    busy = history.run_menu(run).actions()[0]
    assert not busy.isEnabled() and "a run is going" in busy.text()
    stopped = _stop_after(panel, qtbot, 3)
    assert stopped.status == "cancelled" and run_continuation(run) == "resume"
    resume = history.run_menu(run).actions()[0]
    assert resume.text() == "Resume from checkpoint" and resume.isEnabled()
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        resume.trigger()
    assert finished.args[0].status == "finished" and finished.args[0].steps == 40
    assert _plot_steps(panel, "raw") == [float(s) for s in range(1, 41)]
    extend = history.run_menu(run).actions()[0]
    assert extend.text() == "Extend by N steps…" and extend.isEnabled()
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        history.continue_run(run, 5)
    assert finished.args[0].steps == finished.args[0].total_steps == 45
    assert _steps_logged(run) == list(range(1, 46))
    record = history.add_run_folder(run)
    assert record.status == "finished" and record.train_steps[-1] == 45


def test_a_resume_draws_only_the_points_up_to_its_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    cancel = CancelToken()

    def stop_at_3(event: object) -> None:
        if isinstance(event, StepMetrics) and event.step == 3:
            cancel.cancel()

    assert train(short_digits(run, steps=20, eval_every=0), stop_at_3, cancel).status == "cancelled"
    # A run killed after its checkpoint logged steps that its resume trains again: they are not drawn.
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as log:
        for step in (4, 5):
            log.write(json.dumps({"event": "StepMetrics", "step": step, "total_steps": 20, "epoch": 0.1,
                                  "loss": 1.0, "learning_rate": 0.01, "grad_norm": 1.0, "samples_per_second": 1.0,
                                  "tokens_per_second": None, "memory_bytes": None, "eta_seconds": 1.0}) + "\n")
    events, from_step = earlier_events(run)
    assert [e.step for e in events] == [0, 1, 2, 3] and from_step == 3  # the evaluation at step 0, steps 1-3
    assert folder_bytes(run / "adapter") > 0 and folder_bytes(run / "nothing") is None


def test_compare_and_export_on_the_card_reach_history_and_the_export_dialog(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    run = tmp_path / "run"
    with qtbot.waitSignal(window.run_panel.sig_run_finished, timeout=RUN_TIMEOUT_MS):
        window.run_panel.start_run(short_digits(run, steps=4, eval_every=0))
    window.run_panel.summary_card.compare_button.click()
    assert window.tabs.currentWidget() is window.history_panel
    current = window.history_panel.table.currentItem()
    assert Path(current.data(0, Qt.ItemDataRole.UserRole)) == run.resolve()
    assert current.checkState(0) == Qt.CheckState.Checked
    window.run_panel.summary_card.export_button.click()
    dialogs = [d for d in window.findChildren(ExportDialog) if d.isVisible()]
    assert len(dialogs) == 1
    dialogs[0].close()
