"""The Try tab's results: one row per input, the adapted model's top-k beside the base model's.

Rows whose top label changed are tinted *and* marked "changed" in their own column, so the
difference reads without colour too.  Image inputs show a thumbnail (the first
:data:`MAX_THUMBNAILS`; each is decoded at its shown size).  A model without label
names (a custom factory model without ``studio_postprocess``) shows its raw output summary:
shape, argmax and the largest values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QImageReader, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from lora_studio.core import LabelScore, OutputSummary, Prediction

COLUMNS = ("Input", "Adapted", "Base", "Changed")
INPUT, ADAPTED, BASE, CHANGED = range(4)
THUMBNAIL = 64  # pixels: a digit or a photo's subject stays recognisable, rows stay short
MAX_THUMBNAILS = 200  # decoded on the UI thread: past this many rows, names only (a folder of photos stays quick)
# Translucent amber over the theme's own base colour, with the theme's text colour: a soft yellow in
# the light theme, a dim amber in the dark one (an opaque light yellow glared there).
CHANGED_COLOUR = QColor(230, 175, 30, 80)
CHANGED_MARK = "✱ changed"


def format_scores(scores: Sequence[LabelScore]) -> str:
    """``cat 91.2%`` lines, best first."""
    return "\n".join(f"{s.label}  {s.probability:.1%}" for s in scores)


def format_summary(summary: OutputSummary | None) -> str:
    """A raw output in two lines: ``shape (10,) · argmax 3`` and the largest values."""
    if summary is None:
        return ""
    shape = "×".join(str(n) for n in summary.shape) or "scalar"
    top = ", ".join(f"[{i}] {v:.4g}" for i, v in summary.top)
    return f"shape {shape} · argmax {summary.argmax}\ntop: {top}"


def format_side(scores: Sequence[LabelScore] | None, raw: OutputSummary | None) -> str:
    """What a column shows for one side: its top-k, or its raw summary when it has no labels."""
    if scores:
        return format_scores(scores)
    return format_summary(raw)


def thumbnail(path: str, size: int = THUMBNAIL) -> QPixmap:
    """``path`` scaled to fit ``size`` pixels, decoded at that size (a null pixmap when unreadable)."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    original = reader.size()
    if original.isValid() and (original.width() > size or original.height() > size):
        reader.setScaledSize(original.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return QPixmap()
    # Tiny images (8×8 digits) scale up without smoothing, so their pixels stay crisp.
    pixmap = QPixmap.fromImage(image)
    if pixmap.width() < size and pixmap.height() < size:
        pixmap = pixmap.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)
    return pixmap


class PredictionTable(QTableWidget):
    """Input | Adapted top-k | Base top-k | Changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setWordWrap(True)
        self.setAlternatingRowColors(False)  # the changed rows' tint is the only row colour
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        # The scores are short ("cat  91.2%"): their columns fit them, the input takes the rest.
        header.setSectionResizeMode(INPUT, QHeaderView.ResizeMode.Stretch)
        for column in (ADAPTED, BASE, CHANGED):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setMinimumSize(200, 80)  # small: the tab scrolls, the window keeps its 1280x720 minimum
        self.predictions: list[Prediction] = []
        self._images = False

    def show_inputs(self, inputs: Sequence[str], *, images: bool = False) -> None:
        """Rows for ``inputs`` (texts, or image paths shown as thumbnails) before their predictions arrive."""
        self.predictions = []
        self._images = images
        self.setRowCount(len(inputs))
        for row, value in enumerate(inputs):
            self._set_input(row, str(value))
            for column in (ADAPTED, BASE, CHANGED):
                self.setItem(row, column, QTableWidgetItem(""))
        self.resizeRowsToContents()

    def show_predictions(self, predictions: Sequence[Prediction], *, images: bool | None = None) -> None:
        """One row per prediction: the input, both sides' top-k (or raw summaries), the change mark."""
        images = self._images if images is None else images
        self.predictions = list(predictions)
        self._images = images
        self.setRowCount(len(predictions))
        for row, prediction in enumerate(predictions):
            current = self.item(row, INPUT)
            if current is None or current.data(Qt.ItemDataRole.UserRole) != str(prediction.input):
                self._set_input(row, str(prediction.input))
            adapted = format_side(prediction.adapted, prediction.adapted_raw)
            base = format_side(prediction.base, prediction.base_raw) if (
                prediction.base is not None or prediction.base_raw is not None) else "—"
            self.setItem(row, ADAPTED, QTableWidgetItem(adapted))
            self.setItem(row, BASE, QTableWidgetItem(base))
            self.setItem(row, CHANGED, QTableWidgetItem(CHANGED_MARK if _changed(prediction) else ""))
            self._tint(row, _changed(prediction))
        self.resizeRowsToContents()

    def clear_rows(self) -> None:
        """No rows."""
        self.predictions = []
        self.setRowCount(0)

    def cell_text(self, row: int, column: int) -> str:
        """The text of one cell ('' when empty)."""
        item = self.item(row, column)
        return item.text() if item is not None else ""

    def changed_rows(self) -> list[int]:
        """The rows marked as changed."""
        return [row for row in range(self.rowCount()) if self.cell_text(row, CHANGED)]

    def _set_input(self, row: int, value: str) -> None:
        text = Path(value).name if self._images else value
        item = QTableWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, value)
        item.setToolTip(value)
        if self._images and row < MAX_THUMBNAILS:
            pixmap = thumbnail(value)
            if not pixmap.isNull():
                item.setIcon(QIcon(pixmap))
        self.setItem(row, INPUT, item)

    def _tint(self, row: int, changed: bool) -> None:
        for column in range(self.columnCount()):
            item = self.item(row, column)
            if item is None:
                continue
            item.setBackground(QBrush(CHANGED_COLOUR) if changed else QBrush())


def _changed(prediction: Prediction) -> bool:
    """The top label changed, or (no labels) the raw argmax did."""
    if prediction.adapted and prediction.base:
        return prediction.changed
    if prediction.adapted_raw is not None and prediction.base_raw is not None:
        return prediction.adapted_raw.argmax != prediction.base_raw.argmax
    return False
