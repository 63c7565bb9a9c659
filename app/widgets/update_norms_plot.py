"""Which layers are learning: a bar per adapted layer, the norm ‖s · B A‖ of its update.

Refreshed at each evaluation from the ``layer_update_norms`` the engine puts on
``EvalMetrics``; the previous evaluation's norms stay as an outline, so growth shows.

A transformer has dozens of adapted layers with long names (``bert.encoder.layer.5.attention.
self.query``): all of them as bars, named in full, took the whole pane for the axis and left
slivers for the bars.  So the chart shows the :data:`TOP_LAYERS` layers with the largest
updates, largest first, each name shortened to its distinguishing tail, with the full name and
value in the tooltip; the title is a label above the plot, which wraps instead of being clipped.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QLabel, QToolTip, QVBoxLayout, QWidget

from lora_studio.core import EvalMetrics

BAR_HEIGHT = 0.6
TITLE = "Layer updates"
TOP_LAYERS = 12  # bars shown: enough to see which layers learn, few enough to read each name
NAME_CHARS = 30  # a tick label's longest name ("…layer.5.attention.self.query"); longer ones keep their last parts


def short_layer_name(name: str, max_chars: int = NAME_CHARS) -> str:
    """``name`` in at most ``max_chars`` characters: whole when it fits, else ``…`` and as many of
    its last dotted parts as fit (``…layer.5.attention.self.query``): the tail is what tells two
    layers of a transformer apart."""
    if len(name) <= max_chars:
        return name
    parts = name.split(".")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 1 > max_chars:
            break
        tail = f"{part}.{tail}"
    if len(tail) + 1 > max_chars:
        tail = tail[-(max_chars - 1):]
    return f"…{tail}"


def top_layers(norms: dict[str, float], count: int = TOP_LAYERS) -> list[str]:
    """The ``count`` layer names with the largest norms, largest first (ties keep the engine's order)."""
    order = {name: i for i, name in enumerate(norms)}
    return sorted(norms, key=lambda n: (-norms[n], order[n]))[:count]


class UpdateNormsView(QWidget):
    """Horizontal bars of the largest per-layer updates, largest at the top."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel(TITLE)
        self.title.setWordWrap(True)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumSize(160, 120)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setLabel("bottom", "‖s·B·A‖ (Frobenius norm)")
        self.plot.showGrid(x=True, alpha=0.2)
        self.plot.invertY(True)  # the largest update at the top
        self.plot.setMouseEnabled(y=False)
        self.plot.getAxis("left").setStyle(autoExpandTextSpace=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.plot_widget, 1)
        self._previous = pg.BarGraphItem(x0=[], y=[], height=BAR_HEIGHT, width=[], brush=None,
                                         pen=pg.mkPen((120, 120, 120), style=Qt.PenStyle.DashLine))
        self._bars = pg.BarGraphItem(x0=[], y=[], height=BAR_HEIGHT, width=[], brush=(70, 130, 200, 200))
        self.plot.addItem(self._bars)
        self.plot.addItem(self._previous)
        self.norms: dict[str, float] = {}
        self.previous: dict[str, float] = {}
        self.step: int | None = None
        self._shown: list[str] = []
        self.plot.scene().sigMouseMoved.connect(self._hover)

    # -- public API --------------------------------------------------------------------------------
    def clear(self, note: str = "") -> None:
        """Empty the view (a new run); ``note`` replaces the title, e.g. for full fine-tuning."""
        self.norms, self.previous, self.step = {}, {}, None
        self._draw()
        self.title.setText(note or TITLE)

    def add_event(self, event: object) -> None:
        """Redraw from an EvalMetrics that carries per-layer norms (other events are ignored)."""
        if not isinstance(event, EvalMetrics) or event.layer_update_norms is None:
            return
        self.previous, self.norms, self.step = self.norms, dict(event.layer_update_norms), event.step
        self._draw()
        shown = (f"top {len(self._shown)} of {len(self.norms)} layers" if len(self._shown) < len(self.norms)
                 else f"{len(self.norms)} layers")
        self.title.setText(f"{TITLE} · {shown} · step {event.step}")

    def shown_layers(self) -> list[str]:
        """The full names of the layers drawn, top to bottom."""
        return list(self._shown)

    def tick_labels(self) -> list[str]:
        """The names on the axis, top to bottom (shortened)."""
        return [short_layer_name(name) for name in self._shown]

    def tooltip_for_row(self, row: int) -> str:
        """The tooltip of bar ``row`` (0 = top): full name, its norm, and the previous evaluation's."""
        if not 0 <= row < len(self._shown):
            return ""
        name = self._shown[row]
        text = f"{name}\n‖s·B·A‖ = {self.norms[name]:.4g}"
        if name in self.previous:
            text += f" (previous evaluation: {self.previous[name]:.4g})"
        return text

    # -- private -----------------------------------------------------------------------------------
    def _draw(self) -> None:
        self._shown = names = top_layers(self.norms)
        rows = list(range(len(names)))
        self._bars.setOpts(x0=[0.0] * len(rows), y=rows, width=[self.norms[n] for n in names], height=BAR_HEIGHT)
        kept = [i for i, n in enumerate(names) if n in self.previous]
        self._previous.setOpts(x0=[0.0] * len(kept), y=kept, width=[self.previous[names[i]] for i in kept],
                               height=BAR_HEIGHT)
        self.plot.getAxis("left").setTicks([[(i, short_layer_name(name)) for i, name in enumerate(names)]])
        if names:  # bar items do not drive auto-range: frame them explicitly
            self.plot.setYRange(-0.5, len(names) - 0.5, padding=0.05)
            widest = max([*(self.norms[n] for n in names), *(self.previous[names[i]] for i in kept)], default=0.0)
            self.plot.setXRange(0.0, widest or 1.0, padding=0.05)

    def _hover(self, position: QPointF) -> None:
        if not self._shown or not self.plot.sceneBoundingRect().contains(position):
            return
        point = self.plot.vb.mapSceneToView(position)
        row = int(round(point.y()))
        text = self.tooltip_for_row(row) if abs(point.y() - row) <= BAR_HEIGHT / 2 + 0.2 else ""
        if text:
            QToolTip.showText(QCursor.pos(), text, self.plot_widget)
        else:
            QToolTip.hideText()
