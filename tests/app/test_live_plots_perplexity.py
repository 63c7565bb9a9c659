"""Perplexity is plotted on a log axis (it falls by orders of magnitude); accuracy on a linear one."""

from __future__ import annotations

from lora_studio.app.widgets.live_plots import LivePlots
from lora_studio.core import EvalMetrics


def _eval(step: int, *, accuracy: float | None = None, perplexity: float | None = None) -> EvalMetrics:
    return EvalMetrics(step=step, loss=1.0, accuracy=accuracy, perplexity=perplexity, is_best=False)


def test_perplexity_goes_on_a_log_axis_and_a_new_run_of_a_classifier_back_on_a_linear_one(qtbot) -> None:
    plots = LivePlots()
    qtbot.addWidget(plots)
    plots.add_event(_eval(0, perplexity=540.0))
    plots.add_event(_eval(20, perplexity=2.9))
    assert plots.metric_plot.ctrl.logYCheck.isChecked()
    assert "log" in plots.metric_plot.getAxis("left").labelText
    plots.clear()
    plots.add_event(_eval(0, accuracy=0.5))
    assert not plots.metric_plot.ctrl.logYCheck.isChecked()
