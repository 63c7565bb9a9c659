"""Which layers are learning: a bar per adapted layer, the norm ‖s · B A‖ of its update.

Refreshed at each evaluation from the ``layer_update_norms`` the engine puts on
``EvalMetrics``; the previous evaluation's norms stay as an outline, so growth shows.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from lora_studio.core import EvalMetrics

BAR_HEIGHT = 0.6
TITLE = "Layer updates"  # short: a long title widens the plot past a narrow pane and clips it


class UpdateNormsView(QWidget):
    """Horizontal bars, one per adapted layer, in the order the engine reports them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget()
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setTitle(TITLE)
        self.plot.setLabel("bottom", "‖s·B·A‖ (Frobenius norm)")
        self.plot.showGrid(x=True, alpha=0.2)
        self.plot.invertY(True)  # first layer at the top, as in the layer tree
        self.plot.setMouseEnabled(y=False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)
        self._previous = pg.BarGraphItem(x0=[], y=[], height=BAR_HEIGHT, width=[], brush=None,
                                         pen=pg.mkPen((120, 120, 120), style=pg.QtCore.Qt.PenStyle.DashLine))
        self._bars = pg.BarGraphItem(x0=[], y=[], height=BAR_HEIGHT, width=[], brush=(70, 130, 200, 200))
        self.plot.addItem(self._bars)
        self.plot.addItem(self._previous)
        self.norms: dict[str, float] = {}
        self.step: int | None = None

    def clear(self, note: str = "") -> None:
        """Empty the view (a new run); ``note`` replaces the title, e.g. for full fine-tuning."""
        self.norms, self.step = {}, None
        self._draw({}, {})
        self.plot.setTitle(note or TITLE)

    def add_event(self, event: object) -> None:
        """Redraw from an EvalMetrics that carries per-layer norms (other events are ignored)."""
        if not isinstance(event, EvalMetrics) or event.layer_update_norms is None:
            return
        previous, self.norms, self.step = self.norms, dict(event.layer_update_norms), event.step
        self._draw(self.norms, previous)
        self.plot.setTitle(f"{TITLE} · step {event.step}")

    def _draw(self, norms: dict[str, float], previous: dict[str, float]) -> None:
        names = list(norms)
        rows = list(range(len(names)))
        self._bars.setOpts(x0=[0.0] * len(rows), y=rows, width=[norms[n] for n in names], height=BAR_HEIGHT)
        kept = [i for i, n in enumerate(names) if n in previous]
        self._previous.setOpts(x0=[0.0] * len(kept), y=kept, width=[previous[names[i]] for i in kept],
                               height=BAR_HEIGHT)
        self.plot.getAxis("left").setTicks([[(i, name) for i, name in enumerate(names)]])
        if names:  # bar items do not drive auto-range: frame them explicitly
            self.plot.setYRange(-0.5, len(names) - 0.5, padding=0.05)
            widest = max([*norms.values(), *(previous[names[i]] for i in kept)], default=0.0)
            self.plot.setXRange(0.0, widest or 1.0, padding=0.05)
