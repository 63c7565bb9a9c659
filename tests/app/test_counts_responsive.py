"""The counts panel never computes on the UI thread's keystroke path, shows only the newest figures,
refuses an absurd estimate for data that does not fit the model, and shows the run's real use.

No timing here (keystroke-to-paint is measured by bench/bench_ui_latency.py --keystrokes): these
check the mechanism: a change only schedules work, results of overtaken requests are dropped.
"""

from __future__ import annotations

import dataclasses

from studio_window import open_digits_window

from lora_studio.core import Finished, StepMetrics, TrainResult


def test_a_keystroke_schedules_the_estimate_instead_of_computing_it(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    counts = window.counts_panel
    counts.wait_until_current()
    before = counts.estimate
    window.settings_panel.row("lora.r").set_text("16")
    assert counts.estimate is before, "nothing was computed during the keystroke"
    assert not counts.estimator.is_current()
    counts.wait_until_current()
    assert counts.estimate.trainable > before.trainable, "rank 16 trains more than rank 4"


def test_results_of_overtaken_requests_are_dropped(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    counts = window.counts_panel
    counts.wait_until_current()
    shown = []
    counts.estimator.sig_estimate.connect(shown.append)
    row = window.settings_panel.row("lora.r")
    for rank in ("5", "6", "7", "8"):  # typed faster than the debounce: one estimate for the last
        row.set_text(rank)
    counts.wait_until_current()
    assert len(shown) == 1
    assert counts.estimate == shown[0]
    expected = window.counts_panel.estimate.trainable
    row.set_text("8")  # the same config again: the same figures
    counts.wait_until_current()
    assert counts.estimate.trainable == expected


def test_data_that_does_not_fit_the_model_gives_no_estimate(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    session, counts = window.session, window.counts_panel
    text = dataclasses.replace(session.config.data, kind="text-classification", train=str(tmp_path / "t.csv"))
    session.set_config(session.config.replace(data=text))
    counts.wait_until_current()
    assert counts.estimate.memory is None and counts.estimate.data_problem
    assert counts.memory_label.text().startswith("the data does not fit the model")
    assert counts.estimate.data_problem in counts.memory_label.toolTip()  # the whole reason, where it fits
    assert not counts.warning_label.isVisibleTo(window)


def test_the_run_shows_its_measured_peak_and_real_cpu_use(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    counts, session = window.counts_panel, window.session
    counts.wait_until_current()
    step = StepMetrics(step=10, total_steps=100, epoch=0.1, loss=1.0, learning_rate=1e-3, grad_norm=1.0,
                       samples_per_second=100.0, tokens_per_second=None, memory_bytes=3 * 1024**2, eta_seconds=1.0)
    session.sig_run_event.emit(step)
    assert counts.running and counts.device_label.text() in ("CPU use", "GPU memory")
    assert counts.peak_label.text().startswith("3 MiB measured so far")
    assert "%" in counts.memory_bar.format() or "in use" in counts.memory_bar.format()
    session.sig_run_event.emit(Finished(TrainResult("finished", 100, 100, str(tmp_path))))
    assert not counts.running
    assert counts.peak_label.text().startswith("3 MiB measured (")
    assert counts.memory_bar.format().startswith("estimate:")
