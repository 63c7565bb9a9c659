"""The class balance: one bar per label with its count above it (pyqtgraph ``BarGraphItem``).

A skewed training set is the commonest silent cause of a disappointing run, so the
data panel shows the counts as bars the moment a file is picked.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

BAR_COLOUR = "#6366f1"
MAX_TICK_CHARS = 12  # longer label names are cut on the axis (the tooltip has them whole)
MAX_COUNT_LABELS = 8  # with more bars the numbers above them collide; the tooltip lists every count


class ClassBalanceChart(pg.PlotWidget):
    """Bars of sample counts per class; empty (with a title saying so) when there are no labels."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(160)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.getPlotItem().setMenuEnabled(False)
        self.getAxis("left").setLabel("samples")
        self.getAxis("bottom").setHeight(30)  # room for the class names under the bars
        self._counts: dict[str, int] = {}
        self._items: list[pg.GraphicsObject] = []
        self.set_counts({})

    @property
    def counts(self) -> dict[str, int]:
        """The counts shown, in bar order."""
        return dict(self._counts)

    def set_counts(self, counts: dict[str, int]) -> None:
        """Show ``counts`` (label -> samples) as bars, in the order given (the label set's order)."""
        for item in self._items:
            self.removeItem(item)
        self._items.clear()
        self._counts = dict(counts)
        names, heights = list(counts), list(counts.values())
        self.setTitle("class balance" if names else "class balance: no labels", color="#3f3f46", size="10pt")
        self.setToolTip("\n".join(f"{n}: {c}" for n, c in counts.items()))
        for axis in ("left", "bottom"):
            self.getPlotItem().showAxis(axis, bool(names))  # empty axes would read as "zero samples"
        if not names:
            return
        bars = pg.BarGraphItem(x=list(range(len(names))), height=heights, width=0.6, brush=BAR_COLOUR, pen=None)
        self._items.append(bars)
        self.addItem(bars)
        top = max(heights) or 1
        for x, height in enumerate(heights if len(heights) <= MAX_COUNT_LABELS else []):
            text = pg.TextItem(str(height), color="#27272a", anchor=(0.5, 1.0))
            text.setPos(x, height)
            self._items.append(text)
            self.addItem(text)
        self.getAxis("bottom").setTicks([[(i, _short(n)) for i, n in enumerate(names)]])
        self.setXRange(-0.6, len(names) - 0.4, padding=0)
        self.setYRange(0, top * 1.18, padding=0)  # headroom for the count above the tallest bar
        self.getAxis("left").setTickSpacing()  # let pyqtgraph choose again for the new range


def _short(name: str) -> str:
    return name if len(name) <= MAX_TICK_CHARS else name[: MAX_TICK_CHARS - 1] + "…"
