"""Two read-only text views side by side, Base | Adapted, that grow as a generation streams in.

Pieces arrive in batches (``GeneratedPiece`` objects for either side, interleaved); each is
appended at its side's end, so the user can scroll or select text meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QSplitter, QVBoxLayout, QWidget

from lora_studio.core import GeneratedPiece

SIDES = ("base", "adapted")
TITLES = {"base": "Base (adapters off)", "adapted": "Adapted"}


class GenerationView(QWidget):
    """Base on the left, Adapted on the right; each with a title that says when it is done."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.views: dict[str, QPlainTextEdit] = {}
        self.titles: dict[str, QLabel] = {}
        self._counts: dict[str, int] = {}
        self._done: dict[str, bool] = {}
        splitter = QSplitter(Qt.Orientation.Horizontal)
        for side in SIDES:
            column = QWidget()
            layout = QVBoxLayout(column)
            layout.setContentsMargins(0, 0, 0, 0)
            title = QLabel(TITLES[side])
            title.setObjectName(f"generation_title_{side}")
            view = QPlainTextEdit()
            view.setObjectName(f"generation_{side}")
            view.setReadOnly(True)
            view.setMinimumSize(120, 60)  # small: the tab scrolls before the window grows
            view.setPlaceholderText("The generated text appears here, token by token.")
            layout.addWidget(title)
            layout.addWidget(view, 1)
            splitter.addWidget(column)
            self.views[side], self.titles[side] = view, title
        splitter.setSizes([1, 1])
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(splitter)
        self.clear()

    def clear(self) -> None:
        """Both views empty, ready for a new generation."""
        for side in SIDES:
            self.views[side].clear()
            self._counts[side] = 0
            self._done[side] = False
            self.titles[side].setText(TITLES[side])

    def add_pieces(self, pieces: Sequence[GeneratedPiece]) -> None:
        """Append each piece's text at its side's end (the view follows only when it was at the bottom)."""
        grouped: dict[str, list[str]] = {}
        for piece in pieces:
            if piece.which not in self.views:
                continue
            grouped.setdefault(piece.which, []).append(piece.text)
            if piece.text:
                self._counts[piece.which] += 1
            if piece.done:
                self._done[piece.which] = True
        for side, texts in grouped.items():
            self._append(self.views[side], "".join(texts))
            self._update_title(side)

    def finish(self, stopped: bool = False) -> None:
        """The generation ended (``stopped``: by Stop); the titles say so."""
        for side in SIDES:
            self._done[side] = True
            self._update_title(side, stopped=stopped)

    def text(self, side: str) -> str:
        """The text shown for ``side`` ('base' or 'adapted')."""
        return self.views[side].toPlainText()

    def pieces_shown(self, side: str) -> int:
        """How many non-empty pieces ``side`` shows."""
        return self._counts[side]

    def _update_title(self, side: str, *, stopped: bool = False) -> None:
        count = self._counts[side]
        state = " — stopped" if stopped else (" — done" if self._done[side] else " — writing…")
        self.titles[side].setText(f"{TITLES[side]}: {count} token{'s' if count != 1 else ''}{state}")

    @staticmethod
    def _append(view: QPlainTextEdit, text: str) -> None:
        if not text:
            return
        bar = view.verticalScrollBar()
        following = bar.value() >= bar.maximum() - 2
        cursor = QTextCursor(view.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)  # not appendPlainText: a token continues the line it belongs to
        if following:
            bar.setValue(bar.maximum())
