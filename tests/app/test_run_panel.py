"""The Train tab driven as a user would: start, watch, pause, resume, stop, fail and start again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from short_runs import missing_data, short_digits

from lora_studio.app.panels.run_panel import RunPanel, format_bytes, format_duration
from lora_studio.app.state.run_controller import STOPPING
from lora_studio.app.state.session import StudioSession
from lora_studio.core import StepMetrics, load_model, load_trained_run

SCREENSHOTS = Path("/tmp/w2")
RUN_TIMEOUT_MS = 60_000  # two shared CPU cores: generous, the runs take seconds


@pytest.fixture
def panel(qtbot):
    session = StudioSession()
    session.set_loaded(load_model(session.config.model))  # Start stays disabled with no model loaded
    widget = RunPanel(session)
    qtbot.addWidget(widget)
    widget.resize(1100, 800)
    widget.show()
    yield widget
    widget.stop_and_wait(RUN_TIMEOUT_MS)


def _steps(panel: RunPanel) -> int:
    return panel.progress.value()


def test_a_run_draws_curves_evaluations_and_layer_updates(panel, qtbot, tmp_path) -> None:
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(short_digits(tmp_path / "run", steps=20))
        assert panel.is_running() and not panel.start_button.isEnabled()
        qtbot.waitUntil(lambda: panel.plots.point_counts()["raw"] >= 3, timeout=RUN_TIMEOUT_MS)
    result = finished.args[0]
    assert result.status == "finished" and not panel.is_running()
    counts = panel.plots.point_counts()
    assert counts["raw"] == counts["smooth"] == counts["lr"] == 20
    assert counts["val_loss"] == counts["metric"] == 3  # at the start, step 10, step 20
    assert sorted(panel.norms_view.norms) == ["conv1", "conv2", "fc1"] and panel.norms_view.step == 20
    assert all(v > 0 for v in panel.norms_view.norms.values())
    # Once it ended the line keeps the last numbers and drops the ETA (nothing is left to wait for).
    assert "finished at step 20/20" in panel.stats_label.text() and "samples/s" in panel.stats_label.text()
    assert "ETA" not in panel.stats_label.text()
    assert "evaluation at step 20" in panel.log_text()
    assert panel.trained_model() is not None and panel.start_button.isEnabled()
    SCREENSHOTS.mkdir(exist_ok=True)
    panel.grab().save(str(SCREENSHOTS / "run_panel.png"))


def test_pause_holds_the_steps_resume_continues_stop_ends_within_a_step(panel, qtbot, tmp_path) -> None:
    panel.start_run(short_digits(tmp_path / "run", steps=500, eval_every=0))
    qtbot.waitUntil(lambda: _steps(panel) >= 3, timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    assert panel.pause_button.text() == "Resume"
    qtbot.wait(400)  # the step in progress lands
    held = _steps(panel)
    qtbot.wait(800)
    assert _steps(panel) == held, "the step count grew while paused"
    panel.pause_button.click()
    assert panel.pause_button.text() == "Pause"
    qtbot.waitUntil(lambda: _steps(panel) >= held + 3, timeout=RUN_TIMEOUT_MS)
    after_stop = []  # steps the engine finished after Stop, seen on its own thread (the UI may lag)

    def record(event: object) -> None:
        if isinstance(event, StepMetrics) and panel.controller.state == STOPPING:
            after_stop.append(event.step)

    panel.controller.worker.add_thread_listener(record)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.stop_button.click()
        assert panel.state_label.text() == "Stopping…"
    result = finished.args[0]
    assert result.status == "cancelled" and not panel.is_running() and result.steps < 500
    assert len(after_stop) <= 1, after_stop  # the step in progress ends, no other starts
    reloaded = load_trained_run(result.run_dir)
    assert reloaded.model is not None and Path(result.adapter_dir, "adapter_config.json").is_file()
    assert panel.trained_model() is not None


def test_stop_and_wait_ends_a_paused_run(panel, qtbot, tmp_path) -> None:
    panel.start_run(short_digits(tmp_path / "run", steps=500, eval_every=0))
    qtbot.waitUntil(lambda: _steps(panel) >= 1, timeout=RUN_TIMEOUT_MS)
    panel.toggle_pause()
    started = time.perf_counter()
    assert panel.stop_and_wait(RUN_TIMEOUT_MS)
    assert not panel.is_running() and panel.last_result().status == "cancelled"
    assert time.perf_counter() - started < 30


def test_a_failing_run_shows_its_message_and_the_panel_starts_again(panel, qtbot, tmp_path) -> None:
    with qtbot.waitSignal(panel.sig_error, timeout=RUN_TIMEOUT_MS) as error:
        panel.start_run(missing_data(tmp_path / "bad"))
    assert "missing.csv" in error.args[0] and "does not exist" in error.args[0]
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=RUN_TIMEOUT_MS)
    dialog = panel.error_dialog
    assert dialog is not None and dialog.isVisible() and "missing.csv" in dialog.text()
    assert "missing.csv" in panel.log_text()
    dialog.accept()
    assert panel.error_dialog is None and panel.start_button.isEnabled()
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(short_digits(tmp_path / "good", steps=5))
    assert finished.args[0].status == "finished"


def test_start_button_trains_the_session_config_in_a_fresh_folder(qtbot, tmp_path) -> None:
    session = StudioSession(short_digits(tmp_path / "run", steps=3, eval_every=0))
    session.set_loaded(load_model(session.config.model))
    panel = RunPanel(session)
    qtbot.addWidget(panel)
    folders = []
    for _ in range(2):
        with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
            panel.start_button.click()
        folders.append(Path(finished.args[0].run_dir))
    assert folders == [tmp_path / "run", tmp_path / "run-2"]  # the first run is kept, not overwritten


def test_start_is_disabled_while_the_config_is_invalid(panel) -> None:
    signal = getattr(panel.session, "sig_validity_changed", None)
    if signal is None:
        pytest.skip("the session has no validity signal yet")
    signal.emit(False, "training.lr must be > 0")
    assert not panel.start_button.isEnabled() and panel.start_button.toolTip() == "training.lr must be > 0"
    signal.emit(True, "")
    assert panel.start_button.isEnabled()


def test_text_helpers() -> None:
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05"
    assert format_bytes(512) == "512 B" and format_bytes(3 * 1024**2) == "3.0 MiB"
