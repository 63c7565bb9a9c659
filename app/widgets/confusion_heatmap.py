"""A classifier's confusion matrix at its latest evaluation, as a heat map.

Rows are the true classes, columns the predicted ones (the engine's ``EvalMetrics.confusion``);
the colour of a cell is its share of the row (the fraction of that class's examples predicted as
the column's class), so a rare class reads as clearly as a common one and the diagonal is each
class's recall.  The counts are written in the cells while there is room for them (two classes or
forty: the cells shrink, the numbers go, the tooltip still tells).  A pyqtgraph image rather than a
table of coloured cells: forty classes fit the pane without scrolling, and it matches the other plots.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QCursor, QFontMetrics, QPainter
from PySide6.QtWidgets import QLabel, QToolTip, QVBoxLayout, QWidget

from lora_studio.core import EvalMetrics

TITLE = "Confusion matrix"
EMPTY_TEXT = "The confusion matrix of a classifier appears at each evaluation (rows: true class, columns: predicted)."
TICKED_CLASSES = 20  # more classes than this: every k-th class is named on the axes (the rest in the tooltip)
NAME_CHARS = 12  # a class name on an axis; longer ones end in "…"
COLOUR_MAP = "viridis"  # perceptually even, readable in grey and by most colour-blind readers
DARK_BELOW = 0.55  # viridis is dark below this share: white numbers there, black above


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a row of zeros, a class without examples, stays zero)."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=float), where=sums > 0)


def short_class_name(name: str, max_chars: int = NAME_CHARS) -> str:
    """``name`` in at most ``max_chars`` characters (``…`` at the end when cut)."""
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"


class CountLabels(pg.GraphicsObject):
    """Every cell's count, drawn by one item in one paint (a hundred pyqtgraph TextItems took 170 ms
    to replace at each evaluation, on the UI thread), and only when the widest count fits its cell."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: np.ndarray | None = None
        self.shares: np.ndarray | None = None

    def set_counts(self, counts: np.ndarray | None, shares: np.ndarray | None) -> None:
        """Draw these counts (None: none), each coloured for contrast with its cell's share."""
        self.prepareGeometryChange()
        self.counts, self.shares = counts, shares
        self.update()

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        n = 0 if self.counts is None else len(self.counts)
        return QRectF(-0.5, -0.5, n, n)

    def paint(self, painter: QPainter, *args: object) -> None:
        if self.counts is None:
            return
        to_device = painter.transform()
        origin, one = to_device.map(QPointF(0.0, 0.0)), to_device.map(QPointF(1.0, 1.0))
        width, height = abs(one.x() - origin.x()), abs(one.y() - origin.y())
        if not counts_fit(self.counts, width, height, painter.fontMetrics()):
            return
        painter.save()
        painter.resetTransform()  # text in pixels, not stretched (and flipped) with the data
        light, dark = QColor(255, 255, 255), QColor(0, 0, 0)
        for r, row in enumerate(self.counts):
            for c, count in enumerate(row):
                centre = to_device.map(QPointF(float(c), float(r)))
                painter.setPen(light if self.shares[r, c] < DARK_BELOW else dark)
                painter.drawText(QRectF(centre.x() - width / 2, centre.y() - height / 2, width, height),
                                 Qt.AlignmentFlag.AlignCenter, str(int(count)))
        painter.restore()


def counts_fit(counts: np.ndarray, cell_width: float, cell_height: float, metrics: QFontMetrics) -> bool:
    """True when the widest count fits a cell of this many pixels."""
    return (cell_width >= metrics.horizontalAdvance(str(int(counts.max()))) + 4
            and cell_height >= metrics.height())


class ConfusionHeatmap(QWidget):
    """The latest evaluation's confusion matrix: feed it EvalMetrics, or a matrix with :meth:`show_matrix`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel(EMPTY_TEXT)
        self.title.setWordWrap(True)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title.setToolTip("Colour: the share of each true class's examples (rows add up to 100%); "
                              "numbers: counts of validation examples")
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumSize(160, 120)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.invertY(True)  # the first class at the top, as in a table
        self.plot.setLabel("left", "true class")
        self.plot.setLabel("bottom", "predicted class")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get(COLOUR_MAP))
        self.plot.addItem(self.image)
        self.count_labels = CountLabels()
        self.plot.addItem(self.count_labels)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.plot_widget, 1)
        self.counts: np.ndarray | None = None  # the matrix shown, counts
        self.class_names: list[str] = []
        self.step: int | None = None
        self._tick_names: list[str] = []
        self.plot.scene().sigMouseMoved.connect(self._hover)

    # -- public API --------------------------------------------------------------------------------
    def clear(self, note: str = "") -> None:
        """Empty the map (a new run); ``note`` replaces the empty-state text."""
        self.counts, self.class_names, self.step = None, [], None
        self.count_labels.set_counts(None, None)
        self._tick_names = []
        self.image.clear()
        self.plot.getAxis("left").setTicks([[]])
        self.plot.getAxis("bottom").setTicks([[]])
        self.title.setText(note or EMPTY_TEXT)

    def add_event(self, event: object) -> None:
        """Redraw from an EvalMetrics that carries a confusion matrix (other events are ignored)."""
        if isinstance(event, EvalMetrics) and event.confusion:
            self.show_matrix(event.confusion, event.class_names, event.step)

    def show_matrix(self, matrix: list[list[int]], class_names: list[str] | None, step: int | None) -> None:
        """Show ``matrix[true][predicted]`` of the evaluation at ``step`` (class names default to 0, 1, …)."""
        counts = np.asarray(matrix, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
            raise ValueError(f"a confusion matrix must be square and not empty, got shape {counts.shape}")
        n = counts.shape[0]
        names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
        self.counts, self.class_names, self.step = counts, names, step
        shares = row_shares(counts)
        self.image.setImage(shares, levels=(0.0, 1.0), autoLevels=False)
        self.image.setRect(QRectF(-0.5, -0.5, n, n))  # cell (r, c) centred on (c, r)
        every = max(1, math.ceil(n / TICKED_CLASSES))
        ticks = [[(i, short_class_name(name)) for i, name in enumerate(names) if i % every == 0]]
        self._tick_names = [text for _, text in ticks[0]]
        self.plot.getAxis("left").setTicks(ticks)
        self.plot.getAxis("bottom").setTicks(ticks)
        self.plot.setRange(xRange=(-0.5, n - 0.5), yRange=(-0.5, n - 0.5), padding=0)
        self.count_labels.set_counts(counts, shares)
        right, total = int(np.trace(counts)), int(counts.sum())
        share = f"{right / total:.1%}" if total else "no examples"
        at = f" · step {step}" if step is not None else ""
        self.title.setText(f"{TITLE}{at} · {right} of {total} right ({share}) · rows: true, columns: predicted, "
                           "colour: share of the row")

    def colour_values(self) -> np.ndarray | None:
        """The shares the image is coloured by (row-normalised), as drawn."""
        return None if self.image.image is None else np.asarray(self.image.image)

    def cell_labels(self) -> list[list[str]]:
        """The count written in each cell; [] while the cells are too small for their counts."""
        return [[str(int(v)) for v in row] for row in self.counts] if self.labels_shown() else []

    def labels_shown(self) -> bool:
        """True when the cells' counts are drawn: the widest fits a cell at the view's present size."""
        if self.counts is None:
            return False
        n = len(self.counts)
        rect = self.plot.vb.rect()  # the view shows exactly the matrix (no padding)
        return counts_fit(self.counts, rect.width() / n, rect.height() / n, QFontMetrics(self.plot_widget.font()))

    def axis_names(self) -> list[str]:
        """The class names on the axes (shortened; with many classes only every k-th)."""
        return list(self._tick_names)

    def tooltip_for_cell(self, row: int, column: int) -> str:
        """The tooltip of cell (``row`` true class, ``column`` predicted): its count and share of the row."""
        if self.counts is None or not (0 <= row < len(self.counts) and 0 <= column < len(self.counts)):
            return ""
        count, total = int(self.counts[row, column]), int(self.counts[row].sum())
        share = f"{count / total:.1%}" if total else "no examples of this class"
        what = "right (the class's recall)" if row == column else "wrong"
        return (f"true {self.class_names[row]} → predicted {self.class_names[column]}: {count} of {total} ({share}), "
                f"{what}")

    # -- private -----------------------------------------------------------------------------------
    def _hover(self, position: QPointF) -> None:
        if self.counts is None or not self.plot.vb.sceneBoundingRect().contains(position):
            return
        point = self.plot.vb.mapSceneToView(position)
        text = self.tooltip_for_cell(int(round(point.y())), int(round(point.x())))
        if text:
            QToolTip.showText(QCursor.pos(), text, self.plot_widget)
        else:
            QToolTip.hideText()
