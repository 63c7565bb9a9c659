"""History and the layer-updates chart are readable: columns that fit, a legend with swatches beside
the plot, sensible ranges for few points, correct plurals and step numbers, a rank-study summary,
and the top layers of a transformer with short names and full tooltips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QSettings
from short_runs import short_digits

from lora_studio.app.panels.history_panel import RANK_CHART, HistoryPanel, padded_range, plural
from lora_studio.app.state.run_history import read_run, study_points
from lora_studio.app.state.session import StudioSession
from lora_studio.app.widgets.update_norms_plot import NAME_CHARS, TOP_LAYERS, UpdateNormsView, short_layer_name
from lora_studio.core import CancelToken, EvalMetrics, train

HISTORY_WIDTH = 560  # the History tab's width in the window at 1366x768 (settings dock open)


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def _panel(qtbot, settings: QSettings, width: int = HISTORY_WIDTH) -> HistoryPanel:
    panel = HistoryPanel(StudioSession(), settings=settings)
    qtbot.addWidget(panel)
    panel.resize(width, 640)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def _cancelled_run(folder: Path) -> Path:
    """A run with metrics every 10 steps, cancelled at step 16 (after its evaluation there)."""
    config = short_digits(folder, steps=40, log_every=10, eval_every=8)
    cancel = CancelToken()

    def on_event(event: object) -> None:
        if isinstance(event, EvalMetrics) and event.step >= 16:
            cancel.cancel()

    result = train(config, on_event, cancel)
    assert result.status == "cancelled" and result.steps == 16
    return folder


def test_padded_range_frames_few_points() -> None:
    low, high = padded_range([0.0], floor=0.0)
    assert low == 0.0 and 0.0 < high <= 1.1  # one evaluation at step 0: not -150..150
    low, high = padded_range([120.0])
    assert 108 <= low < 120 < high <= 132  # one value: within 10% of it
    low, high = padded_range([0.42])
    assert 0.42 * 0.9 <= low < 0.42 < high <= 0.42 * 1.1
    low, high = padded_range([10.0, 20.0], floor=0.0)
    assert 9.0 <= low < 10.0 and 20.0 < high <= 21.0  # many points: a 6% margin
    assert padded_range([]) is None and padded_range([float("nan")]) is None
    assert (plural(1, "run"), plural(2, "run"), plural(0, "run")) == ("1 run", "2 runs", "0 runs")


def test_a_cancelled_run_shows_the_steps_it_trained(tmp_path) -> None:
    record = read_run(_cancelled_run(tmp_path / "cancelled"))
    assert record.train_steps[-1] == 10  # the last logged step...
    assert record.steps == 16 and record.status == "cancelled"  # ...is not the steps it trained


def test_a_resumed_log_keeps_each_curve_going_forward(tmp_path) -> None:
    folder = tmp_path / "run"
    train(short_digits(folder, steps=6, eval_every=3))
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines if json.loads(line)["event"] == "StepMetrics"]
    # A resume from a checkpoint at step 4 logs steps 5 and 6 again: the new points replace the old.
    again = [dict(record, step=s, loss=9.0) for record, s in zip(steps[4:], (5, 6), strict=True)]
    with (folder / "metrics.jsonl").open("a") as file:
        file.writelines(json.dumps(record) + "\n" for record in again)
    record = read_run(folder)
    assert record.train_steps == [1, 2, 3, 4, 5, 6] and record.train_loss[-2:] == [9.0, 9.0]


def test_history_columns_fit_and_the_legend_has_swatches_outside_the_plot(qtbot, tmp_path, settings) -> None:
    run = _cancelled_run(tmp_path / "cancelled-run-with-a-long-name")
    panel = _panel(qtbot, settings)
    panel.add_run_folder(run)
    qtbot.wait(50)
    item = panel.table.topLevelItem(0)
    assert item.text(3) == "16" and item.text(6) == "cancelled"
    header = panel.table.header()
    assert panel.table.horizontalScrollBar().maximum() == 0  # nothing to scroll sideways to
    status_end = header.sectionViewportPosition(6) + header.sectionSize(6)
    assert status_end <= panel.table.viewport().width()
    assert header.sectionSize(6) >= panel.table.fontMetrics().horizontalAdvance("cancelled")  # not elided
    panel.set_compared([run])
    assert panel.plot_title_text() == "Validation loss of 1 run"
    assert panel.comparison_legend() == [read_run(run).legend]
    entry = panel.legend_list.item(0)
    assert not entry.icon().isNull()  # the curve's colour as a swatch
    plot_box = panel.plot_widget.geometry()
    assert panel.legend_list.isVisible() and panel.legend_list.geometry().top() >= plot_box.bottom()
    panel.metric_box.setCurrentIndex(2)  # accuracy: evaluations at 0, 8, 16
    (x_low, x_high), (y_low, y_high) = panel.plot.viewRange()
    accuracy = [100 * a for a in read_run(run).eval_accuracy]
    assert 0 <= x_low <= 0.01 and 16 < x_high <= 18
    spread = max(accuracy) - min(accuracy)
    assert y_low < min(accuracy) and max(accuracy) < y_high and y_high - y_low <= 1.2 * spread + 2


def test_one_point_gets_a_sensible_range(qtbot, tmp_path, settings) -> None:
    folder = tmp_path / "one"
    train(short_digits(folder, steps=2, eval_every=0))  # an evaluation at the end only
    panel = _panel(qtbot, settings)
    panel.add_run_folder(folder)
    panel.set_compared([folder])
    loss = read_run(folder).eval_loss
    (x_low, x_high), (y_low, y_high) = panel.plot.viewRange()
    steps = read_run(folder).eval_steps
    assert min(steps) - 1 <= x_low <= min(steps) and max(steps) <= x_high <= max(steps) + 2
    assert y_low >= 0.85 * min(loss) and y_high <= 1.15 * max(loss)


def _study_run(folder: Path, r: int | None, accuracy: float, trainable: int) -> Path:
    """A run folder as a finished study run leaves it: run.toml, two evaluations, the result."""
    config = short_digits(folder)
    if r is None:
        config = config.replace(training=dataclasses.replace(config.training, mode="full"))
    else:
        config = config.replace(lora=config.lora.replace(r=r))
    folder.mkdir(parents=True)
    (folder / "run.toml").write_text(config.to_toml())
    records = [{"event": "EvalMetrics", "step": step, "loss": loss, "accuracy": acc, "perplexity": None,
                "is_best": True, "layer_update_norms": None}
               for step, loss, acc in ((0, 2.0, 0.1), (20, 0.5, accuracy))]
    records.append({"event": "Finished", "result": {"status": "finished", "steps": 20, "total_steps": 20,
                                                    "run_dir": str(folder), "trainable_parameters": trainable}})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder


def test_the_rank_study_chart_puts_final_results_against_rank(qtbot, tmp_path, settings) -> None:
    study = tmp_path / "demo-study"
    folders = [_study_run(study / "r16", 16, 0.9, 4000), _study_run(study / "r4", 4, 0.7, 1000),
               _study_run(study / "full", None, 0.95, 20000)]
    points = study_points([read_run(folder) for folder in folders])
    assert [(p.rank, p.trainable, p.metric) for p in points] == [
        (4, 1000, "accuracy (%)"), (16, 4000, "accuracy (%)"), (None, 20000, "accuracy (%)")]
    assert [round(p.value, 6) for p in points] == [70.0, 90.0, 95.0]
    panel = _panel(qtbot, settings)
    for folder in folders:
        panel.add_run_folder(folder)
    panel.set_compared(folders)
    panel.metric_box.setCurrentIndex(RANK_CHART)
    assert panel.plot_title_text() == "Final accuracy (%) against rank, 3 runs"
    assert panel.plot.getAxis("bottom").labelText == "rank (log scale)"
    labels = [item.toPlainText() for item in panel.plot.items if isinstance(item, pg.TextItem)]
    assert sorted(labels) == ["1,000 trainable", "4,000 trainable"]  # one per LoRA rank
    lines = [item for item in panel.plot.items if isinstance(item, pg.InfiniteLine)]
    assert len(lines) == 1 and lines[0].value() == pytest.approx(95.0)  # full fine-tuning, across
    points_item = panel.plot.listDataItems()[-1]
    assert list(points_item.xData) == [2.0, 4.0] and list(points_item.yData) == pytest.approx([70.0, 90.0])
    assert len(panel.comparison_legend()) == 3


def test_layer_updates_show_the_top_layers_with_short_names_and_tooltips(qtbot) -> None:
    view = UpdateNormsView()
    qtbot.addWidget(view)
    view.resize(340, 300)
    view.show()
    names = [f"bert.encoder.layer.{i // 4}.attention.self.{kind}" for i, kind in
             enumerate(["query", "key", "value", "output"] * 9)]
    norms = {name: float(i % 7) + i / 100 for i, name in enumerate(names)}
    view.add_event(EvalMetrics(step=40, loss=1.0, accuracy=0.5, perplexity=None, is_best=True,
                               layer_update_norms=norms))
    shown = view.shown_layers()
    assert len(shown) == TOP_LAYERS and [norms[n] for n in shown] == sorted(norms.values(), reverse=True)[:TOP_LAYERS]
    assert all(len(label) <= NAME_CHARS for label in view.tick_labels())
    assert all(shown[i].endswith(label.lstrip("…")) for i, label in enumerate(view.tick_labels()))
    assert view.tooltip_for_row(0).startswith(shown[0]) and f"{norms[shown[0]]:.4g}" in view.tooltip_for_row(0)
    assert view.title.text() == f"Layer updates · top {TOP_LAYERS} of {len(names)} layers · step 40"
    assert view.title.wordWrap() and view.minimumSizeHint().width() <= 340
    assert short_layer_name("fc1") == "fc1" and short_layer_name("x" * 40) == "…" + "x" * (NAME_CHARS - 1)
    assert short_layer_name("model.layers.11.self_attn.q_proj") == "…layers.11.self_attn.q_proj"
    assert short_layer_name("bert.encoder.layer.5.attention.self.query") == "…layer.5.attention.self.query"
