"""Live training curves: loss (raw and smoothed), validation loss, accuracy or perplexity, learning rate.

Following pyqtgraph's own advice for streaming data: every curve is created once,
events only append to growing numpy buffers, and a timer calls ``setData`` on what
changed (never one redraw per event).  Peak downsampling and clip-to-view keep a
run of many thousand steps as cheap to draw as a short one.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

from lora_studio.core import EvalMetrics, StepMetrics

REFRESH_MS = 200  # five redraws a second: smooth to the eye, negligible UI-thread time
SMOOTHING = 0.6  # EMA weight of the smoothed loss (TensorBoard's default): heavier lags a short run badly


class GrowingSeries:
    """An (x, y) series in numpy arrays that double when full: appends are O(1) amortised and
    ``setData`` gets views, not a copy of a Python list at every redraw."""

    def __init__(self, capacity: int = 256) -> None:
        self._x = np.empty(capacity)
        self._y = np.empty(capacity)
        self.size = 0

    def append(self, x: float, y: float) -> None:
        """Add one point."""
        if self.size == len(self._x):
            self._x = np.resize(self._x, 2 * self.size)
            self._y = np.resize(self._y, 2 * self.size)
        self._x[self.size], self._y[self.size] = x, y
        self.size += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of the points so far."""
        return self._x[: self.size], self._y[: self.size]

    def clear(self) -> None:
        """Forget every point (the buffers are kept)."""
        self.size = 0


class LivePlots(QWidget):
    """Four plots fed by engine events; call :meth:`add_event`, the timer draws."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        self.loss_plot = self._plot(0, 0, "Training loss", "loss")
        self.val_loss_plot = self._plot(0, 1, "Validation loss", "loss")
        self.metric_plot = self._plot(1, 0, "Validation accuracy", "accuracy (%)")
        self.lr_plot = self._plot(1, 1, "Learning rate", "lr")
        self.loss_plot.addLegend(offset=(-10, 10))
        raw_pen = pg.mkPen((100, 149, 237, 110), width=1)
        self.series = {name: GrowingSeries() for name in ("raw", "smooth", "val_loss", "metric", "lr")}
        self.curves = {
            "raw": self.loss_plot.plot(pen=raw_pen, name="raw"),
            "smooth": self.loss_plot.plot(pen=pg.mkPen((30, 90, 200), width=2), name=f"smoothed ({SMOOTHING})"),
            "val_loss": self.val_loss_plot.plot(pen=pg.mkPen((220, 110, 30), width=2), symbol="o", symbolSize=6,
                                                symbolBrush=(220, 110, 30)),
            "metric": self.metric_plot.plot(pen=pg.mkPen((40, 160, 80), width=2), symbol="o", symbolSize=6,
                                            symbolBrush=(40, 160, 80)),
            "lr": self.lr_plot.plot(pen=pg.mkPen((140, 80, 180), width=2)),
        }
        self._ema: float | None = None
        self._dirty: set[str] = set()
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)

    # -- public API --------------------------------------------------------------------------------
    def start(self) -> None:
        """Redraw on the timer (while a run is going)."""
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer after one last redraw."""
        self._timer.stop()
        self.refresh()

    def clear(self) -> None:
        """Empty every curve (a new run starts)."""
        for series in self.series.values():
            series.clear()
        self._ema = None
        self.metric_plot.setTitle("Validation accuracy")
        self.metric_plot.setLabel("left", "accuracy (%)")
        self.metric_plot.setLogMode(y=False)
        self._dirty = set(self.series)
        self.refresh()

    def add_event(self, event: object) -> None:
        """Buffer the numbers of a StepMetrics or EvalMetrics event (others are ignored)."""
        if isinstance(event, StepMetrics):
            self._add_step(event)
        elif isinstance(event, EvalMetrics):
            self._add_eval(event)

    def refresh(self) -> None:
        """Hand what changed since the last redraw to its curves."""
        for name in self._dirty:
            self.curves[name].setData(*self.series[name].arrays())
        self._dirty.clear()

    def point_counts(self) -> dict[str, int]:
        """How many points each curve shows now (drawn, not just buffered)."""
        return {name: len(curve.xData) if curve.xData is not None else 0 for name, curve in self.curves.items()}

    # -- private -----------------------------------------------------------------------------------
    def _plot(self, row: int, col: int, title: str, unit: str) -> pg.PlotItem:
        plot = self.graphics.addPlot(row=row, col=col, title=title)
        plot.setDownsampling(auto=True, mode="peak")
        plot.setClipToView(True)
        # No grid: its lines are drawn across every plot at every redraw and doubled the paint
        # time (22 -> 11 ms median in a 300-step 700x450 window), which the UI thread pays during a run.
        plot.setLabel("bottom", "step")
        plot.setLabel("left", unit)
        plot.getAxis("left").enableAutoSIPrefix(False)  # "lr (x0.001)" reads worse than 0.005
        return plot

    def _add_step(self, event: StepMetrics) -> None:
        self.series["raw"].append(event.step, event.loss)
        # EMA seeded with the first loss (not zero), so its start is not dragged down.
        self._ema = event.loss if self._ema is None else SMOOTHING * self._ema + (1 - SMOOTHING) * event.loss
        self.series["smooth"].append(event.step, self._ema)
        self.series["lr"].append(event.step, event.learning_rate)
        self._dirty.update(("raw", "smooth", "lr"))

    def _add_eval(self, event: EvalMetrics) -> None:
        self.series["val_loss"].append(event.step, event.loss)
        self._dirty.add("val_loss")
        if event.accuracy is not None:
            self.series["metric"].append(event.step, 100.0 * event.accuracy)
            self._dirty.add("metric")
        elif event.perplexity is not None:
            if self.series["metric"].size == 0:
                self.metric_plot.setTitle("Validation perplexity")
                self.metric_plot.setLabel("left", "perplexity (log scale)")
                # Perplexity falls by orders of magnitude (the story demo: ~540 to ~2): on a linear axis
                # every point after the first sits on the floor.
                self.metric_plot.setLogMode(y=True)
            self.series["metric"].append(event.step, event.perplexity)
            self._dirty.add("metric")
