"""A few samples of the dataset: text rows with their labels, or thumbnails captioned by label.

Thumbnails are decoded off the UI thread (:func:`thumbnail_images` runs in the data
panel's worker; ``QImage`` may be built on any thread, ``QPixmap`` only on the UI one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QListWidget,
    QListWidgetItem,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from lora_studio.core import DataPreview, PreviewSample

THUMBNAIL = 88  # pixels: big enough to recognise a digit or a photo's subject
BAD_TILE_COLOUR = "#fee2e2"  # the tile of a file training cannot read (light red, readable in both themes)
BAD_TEXT_COLOUR = "#991b1b"


def thumbnail_images(samples: Sequence[PreviewSample], size: int = THUMBNAIL) -> list[QImage]:
    """One ``size``-pixel QImage per image sample (a null image for a file Qt cannot read)."""
    images = []
    for sample in samples:
        if sample.pixels is not None:
            pixels = sample.pixels
            height, width = pixels.shape[:2]
            image = QImage(pixels.tobytes(), width, height, width, QImage.Format.Format_Grayscale8).copy()
            # Tiny images (8×8 digits) are scaled without smoothing so their pixels stay crisp.
            mode = Qt.TransformationMode.FastTransformation
        elif sample.image_path is not None:
            image = QImage(sample.image_path)
            mode = Qt.TransformationMode.SmoothTransformation
        else:
            continue
        if not image.isNull():
            image = image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, mode)
        images.append(image)
    return images


class SamplePreview(QStackedWidget):
    """Text rows in a table, or thumbnails in a grid; which one follows the data."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.thumbnails = QListWidget()
        self.thumbnails.setViewMode(QListWidget.ViewMode.IconMode)
        self.thumbnails.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.thumbnails.setGridSize(QSize(THUMBNAIL + 24, THUMBNAIL + 30))
        self.thumbnails.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.thumbnails.setMovement(QListWidget.Movement.Static)
        self.addWidget(self.table)
        self.addWidget(self.thumbnails)

    def show_preview(self, preview: DataPreview | None, images: Sequence[QImage] = ()) -> None:
        """Show ``preview``'s samples (``images``: their thumbnails, for image data); None clears."""
        self.table.setRowCount(0)
        self.thumbnails.clear()
        samples = preview.samples if preview is not None else ()
        if samples and (samples[0].pixels is not None or samples[0].image_path is not None):
            for sample, image in zip(samples, images):
                item = QListWidgetItem(QIcon(QPixmap.fromImage(image)), sample.label or "")
                item.setToolTip(sample.image_path or f"label {sample.label}")
                item.setData(Qt.ItemDataRole.UserRole, sample.image_path)
                item.setData(Qt.ItemDataRole.UserRole + 1, sample.label or "")
                self.thumbnails.addItem(item)
            self.setCurrentWidget(self.thumbnails)
            return
        paired = any(s.response is not None for s in samples)
        labelled = any(s.label is not None for s in samples)
        headers = ["prompt", "response"] if paired else ["text", "label"] if labelled else ["text"]
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        for row, sample in enumerate(samples):
            self.table.insertRow(row)
            cells = [sample.text, sample.response] if paired else [sample.text, sample.label][: len(headers)]
            for col, value in enumerate(cells):
                item = QTableWidgetItem(value or "")
                item.setToolTip(value or "")
                self.table.setItem(row, col, item)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.setCurrentWidget(self.table)

    def mark_bad(self, reasons: Mapping[str, str]) -> None:
        """Show the thumbnails of bad files (path -> reason, from the data check) as a red tile
        saying why, instead of a blank one; their captions say "(bad)"."""
        for i in range(self.thumbnails.count()):
            item = self.thumbnails.item(i)
            path = item.data(Qt.ItemDataRole.UserRole)
            if path in reasons:
                item.setIcon(QIcon(bad_tile(reasons[path])))
                item.setText(f"{item.data(Qt.ItemDataRole.UserRole + 1)} (bad)")
                item.setToolTip(f"{path}\n{reasons[path]}: training cannot read it")

    def bad_captions(self) -> list[str]:
        """The captions of the tiles marked bad, in order."""
        return [t for t in self.thumbnail_captions() if t.endswith(" (bad)")]

    def rows(self) -> list[tuple[str, ...]]:
        """The table's rows as text (what the user reads)."""
        return [
            tuple(self.table.item(r, c).text() for c in range(self.table.columnCount()))
            for r in range(self.table.rowCount())
        ]

    def thumbnail_captions(self) -> list[str]:
        """The captions (labels) under the thumbnails, in order."""
        return [self.thumbnails.item(i).text() for i in range(self.thumbnails.count())]


def bad_tile(reason: str, size: int = THUMBNAIL) -> QPixmap:
    """A ``size``-pixel tile naming why a file cannot be read (UI thread: it paints a QPixmap)."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(BAD_TILE_COLOUR))
    painter = QPainter(pixmap)
    painter.setPen(QColor(BAD_TEXT_COLOUR))
    font = painter.font()
    font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
    painter.setFont(font)
    painter.drawText(QRect(4, 4, size - 8, size - 8),
                     int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap), f"✕\n{reason}")
    painter.end()
    return pixmap
