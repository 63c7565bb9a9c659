"""A run's samples and confusion matrix in History: read from its folder (so they are there after a
restart), kept up to date while it trains, and two runs' samples side by side."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QSettings
from short_runs import short_digits

from lora_studio.app.panels.history_panel import SAMPLES_COMPARED, SAMPLES_SELECTED, HistoryPanel
from lora_studio.app.state.run_controller import RunController
from lora_studio.app.state.run_history import earlier_samples, read_run
from lora_studio.app.state.session import StudioSession
from lora_studio.app.widgets.samples_view import verdict_mark
from lora_studio.core import EvalMetrics, SampleResult, Samples, train

RUN_TIMEOUT_MS = 90_000  # shared CPU cores: generous, the runs take seconds


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def _panel(qtbot, settings: QSettings) -> HistoryPanel:
    panel = HistoryPanel(StudioSession(), settings=settings)
    qtbot.addWidget(panel)
    panel.resize(1100, 700)
    panel.show()
    return panel


def _trained(folder, r: int) -> tuple[list[Samples], list[EvalMetrics]]:
    """Train a short digits run at rank ``r`` in ``folder``; its Samples and EvalMetrics events."""
    events: list = []
    config = short_digits(folder, steps=6, eval_every=3)
    assert train(config.replace(lora=config.lora.replace(r=r)), events.append).status == "finished"
    return ([e for e in events if isinstance(e, Samples)], [e for e in events if isinstance(e, EvalMetrics)])


def _select(panel: HistoryPanel, row: int) -> None:
    panel.table.setCurrentItem(panel.table.topLevelItem(row))


def test_samples_and_confusion_matrix_come_back_after_a_restart_and_compare_side_by_side(
        qtbot, tmp_path, settings) -> None:
    samples_a, evals_a = _trained(tmp_path / "a", r=4)
    samples_b, evals_b = _trained(tmp_path / "b", r=1)
    assert [s.step for s in samples_a] == [0, 3, 6]
    panel = _panel(qtbot, settings)
    for name in ("a", "b"):
        panel.add_run_folder(tmp_path / name)
    _select(panel, 0)
    assert panel.samples_view.history == samples_a and panel.samples_view.shown_step() == 6
    assert panel.confusion_view.counts.tolist() == evals_a[-1].confusion and panel.confusion_view.step == 6

    again = _panel(qtbot, settings)  # the next session: nothing but the folders on disk
    assert [run.name for run in again.runs()] == ["a", "b"]
    _select(again, 1)
    assert again.samples_view.history == samples_b
    assert [row[1:4] for row in again.samples_view.cell_texts()] == [[i.input, i.output, i.target]
                                                                      for i in samples_b[-1].items]
    assert again.confusion_view.counts.tolist() == evals_b[-1].confusion

    # Ticking both runs puts their latest samples side by side, the same examples on one row.
    again.set_compared([tmp_path / "a", tmp_path / "b"])
    assert again.samples_mode.currentIndex() == SAMPLES_COMPARED
    assert again.samples_stack.currentWidget() is again.compare_samples_view
    rows = again.compare_samples_view.rows()
    last_a, last_b = samples_a[-1].items, samples_b[-1].items
    assert [i.input for i in last_a] == [i.input for i in last_b]  # the same seed draws the same examples
    assert [row.results for row in rows] == list(zip(last_a, last_b, strict=True))
    assert [row.differs for row in rows] == [a.output != b.output for a, b in zip(last_a, last_b, strict=True)]
    text = again.compare_samples_view.plain_text()
    assert "a · step 6" in text and "b · step 6" in text
    for item in last_a + last_b:
        assert f"{verdict_mark(item)} {item.output}" in text
    again.set_compared([tmp_path / "a"])  # one run left: back to the selected run's samples
    assert again.samples_mode.currentIndex() == SAMPLES_SELECTED


def test_history_follows_a_running_runs_samples(qtbot, tmp_path, settings) -> None:
    session = StudioSession()
    panel = HistoryPanel(session, settings=settings)
    qtbot.addWidget(panel)
    panel.show()
    controller = RunController.for_session(session)
    events: list = []
    controller.sig_event.connect(events.append)
    with qtbot.waitSignal(controller.sig_run_finished, timeout=RUN_TIMEOUT_MS):
        controller.start(short_digits(tmp_path / "live", steps=4, eval_every=2))
    samples = [e for e in events if isinstance(e, Samples)]
    assert [s.step for s in samples] == [0, 2, 4]
    assert panel.samples_view.history == samples  # the selected (only) run, re-read at each evaluation
    last = [e for e in events if isinstance(e, EvalMetrics)][-1]
    assert panel.confusion_view.counts.tolist() == last.confusion
    controller.stop_and_wait(RUN_TIMEOUT_MS)


def test_a_resumed_runs_repeated_samples_replace_the_old_ones(tmp_path) -> None:
    """A resumed run evaluates again from its checkpoint: the log holds step 4's samples twice."""
    run = tmp_path / "run"
    config = short_digits(run, steps=4, eval_every=2)
    train(config)
    repeated = Samples(4, [SampleResult("validation example #1", "3", "3", True, 0.5)])
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps({"event": "Samples", "step": 4, "items": [vars(i) for i in repeated.items]}) + "\n")
    record = read_run(run)
    assert [s.step for s in record.samples] == [0, 2, 4] and record.last_samples == repeated
    assert [c.step for c in record.confusions] == [0, 2, 4]
    assert record.last_confusion.class_names == [str(k) for k in range(10)]
    assert [s.step for s in earlier_samples(run, 2)] == [0, 2]
