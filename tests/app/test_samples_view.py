"""The Train tab's Samples pane: what it shows is what the Samples events say (texts, right/wrong,
probabilities), it follows the latest evaluation and goes back to earlier ones, says what to do
when there are none, and shows the samples of a real short digits run as they arrive."""

from __future__ import annotations

import dataclasses

import pytest
from short_runs import short_digits, shown_run_panel

from lora_studio.app.panels.run_panel import RunPanel, samples_note
from lora_studio.app.state.run_history import compare_samples
from lora_studio.app.state.session import StudioSession
from lora_studio.app.widgets.run_summary_card import classes_line
from lora_studio.app.widgets.samples_view import (
    RIGHT,
    RIGHT_TINT,
    WRONG,
    WRONG_TINT,
    SamplesCompareView,
    SamplesView,
    probability_text,
)
from lora_studio.core import ClassChange, DataConfig, EvalMetrics, SampleResult, Samples, class_changes, load_model

RUN_TIMEOUT_MS = 90_000  # shared CPU cores: generous, the run takes seconds

PREDICTIONS = Samples(10, [
    SampleResult("validation example #3", "7", "3", False, 0.41),
    SampleResult("validation example #8", "8", "8", True, 0.93),
    SampleResult("validation example #5", "5", "5", True, 0.07),
])


def _view(qtbot) -> SamplesView:
    view = SamplesView()
    qtbot.addWidget(view)
    view.resize(600, 300)
    view.show()
    return view


def _generations(step: int, *outputs: str) -> Samples:
    prompts = ("Once upon a time", "The little fox")
    return Samples(step, [SampleResult(p, o) for p, o in zip(prompts, outputs, strict=True)])


def test_classifier_samples_show_each_prediction_right_or_wrong(qtbot) -> None:
    view = _view(qtbot)
    view.add_event(PREDICTIONS)
    expected = [[RIGHT if item.correct else WRONG, item.input, item.output, item.target,
                 probability_text(item.probability)] for item in PREDICTIONS.items]
    assert view.cell_texts() == expected
    assert [row[4] for row in view.cell_texts()] == ["41%", "93%", "7.0%"]
    right = sum(item.correct for item in PREDICTIONS.items)
    assert view.right_wrong() == (right, len(PREDICTIONS.items) - right)
    assert f"{right} of {len(PREDICTIONS.items)} right" in view.title.text() and "step 10" in view.title.text()
    # The colour only repeats the mark: right rows one tint, wrong rows the other.
    tints = [view.table.item(row, 1).background().color() for row in range(view.table.rowCount())]
    assert [t == (RIGHT_TINT if item.correct else WRONG_TINT) for t, item in zip(tints, PREDICTIONS.items,
                                                                                   strict=True)] == [True] * 3
    assert "wrong" in view.table.item(0, 2).toolTip() and "right" in view.table.item(1, 2).toolTip()


def test_generations_follow_the_latest_evaluation_and_the_slider_goes_back(qtbot) -> None:
    view = _view(qtbot)
    first, second = _generations(0, "a b c", "d e"), _generations(10, "there was a fox", "ran away")
    view.add_event(first)
    view.add_event(EvalMetrics(step=10, loss=1.0, accuracy=None, perplexity=3.0, is_best=True))  # ignored
    view.add_event(second)
    assert view.steps() == [0, 10] and view.shown_step() == 10 and view.right_wrong() is None
    assert view.headers() == ["Prompt", "Generated at step 10"]
    assert view.cell_texts() == [[item.input, item.output] for item in second.items]
    assert "At step 0: a b c" in view.table.item(0, 1).toolTip()  # what it wrote one evaluation earlier
    view.show_step(0)
    assert view.cell_texts() == [[item.input, item.output] for item in first.items]
    third = _generations(20, "there was a fox who", "ran")
    view.add_event(third)  # the user looks at step 0: a new evaluation does not pull the view away
    assert view.shown_step() == 0 and view.steps() == [0, 10, 20]
    view.slider.setValue(view.slider.maximum())
    assert view.shown_step() == 20
    view.add_event(_generations(30, "x", "y"))  # back at the latest: it follows again
    assert view.shown_step() == 30 and "(latest)" in view.step_label.text()
    resumed = _generations(20, "resumed", "again")  # a resumed run evaluates step 20 again
    view.add_event(resumed)
    assert view.steps() == [0, 10, 20] and view.shown_samples() == resumed


def test_empty_state_says_what_to_do(qtbot, tmp_path) -> None:
    view = _view(qtbot)
    assert view.is_empty() and "[samples] prompts" in view.empty_label.text()
    digits = short_digits(tmp_path / "run")
    assert "predicted labels of 8 validation examples" in samples_note(digits)
    none = digits.replace(samples=dataclasses.replace(digits.samples, count=0))
    assert "[samples] count" in samples_note(none)
    language = digits.replace(data=DataConfig(kind="causal-lm", train=str(tmp_path / "story.txt")))
    assert "[samples] prompts" in samples_note(language)
    prompted = language.replace(samples=dataclasses.replace(language.samples, prompts=["Once", "Then"]))
    assert "generations of 2 prompts" in samples_note(prompted)
    view.clear(samples_note(none))
    assert view.is_empty() and view.empty_label.text() == samples_note(none)


def test_the_confusion_tab_is_a_classifiers(qtbot, tmp_path) -> None:
    digits = short_digits(tmp_path / "run")
    language = digits.replace(data=DataConfig(kind="causal-lm", train=str(tmp_path / "story.txt")))
    shown = []
    for config in (digits, language):
        panel = RunPanel(StudioSession(config))
        qtbot.addWidget(panel)
        shown.append(panel.side_tabs.isTabVisible(panel.confusion_tab))
    assert shown == [True, False]
    assert panel.samples_view.empty_label.text() == samples_note(language)
    panel.session.set_config(digits)  # another kind of model before the next run: the panes follow
    assert panel.side_tabs.isTabVisible(panel.confusion_tab)
    assert panel.samples_view.empty_label.text() == samples_note(digits)


def test_two_runs_samples_line_up_by_input_with_differences_marked(qtbot) -> None:
    a = _generations(20, "there was a fox", "ran away")
    b = Samples(30, [SampleResult("The little fox", "ran away"), SampleResult("Once upon a time", "there was a bear"),
                     SampleResult("Only in b", "text")])
    rows = compare_samples([a, b])
    assert [row.input for row in rows] == ["Once upon a time", "The little fox", "Only in b"]
    assert [[r.output if r else None for r in row.results] for row in rows] == [
        ["there was a fox", "there was a bear"], ["ran away", "ran away"], [None, "text"]]
    assert [row.differs for row in rows] == [True, False, True]
    twice = Samples(1, [SampleResult("p", "x"), SampleResult("p", "y")])  # the same prompt twice
    assert [[r.output for r in row.results] for row in compare_samples([twice, twice])] == [["x", "x"], ["y", "y"]]
    view = SamplesCompareView()
    qtbot.addWidget(view)
    view.show_runs(["r4", "r8"], [a, b])
    text = view.plain_text()
    for item in a.items + b.items:
        assert item.input in text and item.output in text
    assert "r4 · step 20" in text and "r8 · step 30" in text
    assert view.differing_count() == 2 and "2 differ" in view.title.text()
    assert text.count("≠") == 2
    view.show_runs(["r4", "none"], [a, None])  # one run has no samples: nothing to compare
    assert view.rows() == [] and "Tick two or more runs" in view.title.text()


@pytest.fixture
def panel(qtbot):
    session = StudioSession()
    session.set_loaded(load_model(session.config.model))
    widget = shown_run_panel(qtbot, session)
    yield widget
    widget.stop_and_wait(RUN_TIMEOUT_MS)


def test_a_digits_run_shows_its_samples_and_confusion_matrix_as_they_arrive(panel, qtbot, tmp_path) -> None:
    events: list = []
    panel.controller.sig_event.connect(events.append)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.start_run(short_digits(tmp_path / "run", steps=10, eval_every=5))
    assert finished.args[0].status == "finished"
    samples = [e for e in events if isinstance(e, Samples)]
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    assert [s.step for s in samples] == [e.step for e in evals] == [0, 5, 10]
    view = panel.samples_view
    assert view.history == samples and view.shown_step() == 10
    last = samples[-1]
    assert [row[1:4] for row in view.cell_texts()] == [[i.input, i.output, i.target] for i in last.items]
    right = sum(1 for i in last.items if i.correct)
    assert view.right_wrong() == (right, len(last.items) - right)
    assert f"samples at step 10: {right} of {len(last.items)} right" in panel.log_text()
    assert panel.confusion_view.counts.tolist() == evals[-1].confusion
    assert panel.confusion_view.step == 10 and panel.side_tabs.isTabVisible(panel.confusion_tab)
    changes = class_changes(evals[0].confusion, evals[-1].confusion, evals[-1].class_names)
    assert panel.last_summary().class_changes == tuple(changes)
    assert panel.summary_card.classes_label.text() == classes_line(changes) != ""
    assert all(c.name in panel.summary_card.classes_label.toolTip() for c in changes)


def test_the_summary_names_the_classes_that_improved_most() -> None:
    changes = [ClassChange("7", 0.40, 0.95), ClassChange("1", 0.62, 0.90), ClassChange("3", 0.5, 0.5)]
    assert classes_line(changes, count=2) == "Improved most: 7 (40% → 95%), 1 (62% → 90%)"
    worse = changes + [ClassChange("4", 0.9, 0.8)]
    assert classes_line(worse) == "Improved most: 7 (40% → 95%), 1 (62% → 90%)  ·  worse: 4 (90% → 80%)"
    assert classes_line([ClassChange("0", 0.5, 0.5)]) == "No class improved its recall"
    assert classes_line(()) == ""  # not a classifier, or a single evaluation


def test_an_extended_run_keeps_its_earlier_samples(panel, qtbot, tmp_path) -> None:
    run = tmp_path / "run"
    events: list = []
    panel.controller.sig_event.connect(events.append)
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS):
        panel.start_run(short_digits(run, steps=4, eval_every=2))
    first = [e for e in events if isinstance(e, Samples)]
    assert [s.step for s in first] == [0, 2, 4]
    with qtbot.waitSignal(panel.sig_run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        panel.continue_run(run, extra_steps=2)
    assert finished.args[0].status == "finished"
    view = panel.samples_view
    assert view.history[:3] == first  # read back from the folder when the run continued
    assert view.steps()[-1] == 6 and view.shown_step() == 6
    assert view.history[-1] == [e for e in events if isinstance(e, Samples)][-1]
