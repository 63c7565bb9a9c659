"""A one-line, non-modal notice with an action button (Undo) and a close button.

It says what just happened without stopping the user (a model change that left out some
hand-set values); it stays until closed, acted on or replaced, and hides itself when empty.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QToolButton, QWidget


class NoticeBar(QFrame):
    """A label, an action button and a close button in a slim framed bar."""

    sig_action = Signal()
    """The action button (e.g. Undo) was pressed; the bar hides itself."""

    def __init__(self, action_text: str = "Undo", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("notice_bar")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        # A soft yellow that reads as "note" in both themes, with dark text on it.
        self.setStyleSheet("#notice_bar { background: #fff4cc; border: 1px solid #e0c060; border-radius: 3px; }"
                           "#notice_bar QLabel { color: #3a3000; }")
        self.label = QLabel()
        # Wrapped, so a long notice never forces the panel wider than the screen.
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_button = QPushButton(action_text)
        self.close_button = QToolButton(text="✕")
        self.close_button.setToolTip("Hide this notice")
        self.close_button.setAutoRaise(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 2, 2)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button)
        layout.addWidget(self.close_button)
        self.action_button.clicked.connect(self._act)
        self.close_button.clicked.connect(self.hide)
        self.hide()

    def show_notice(self, text: str) -> None:
        """Show ``text`` (the whole of it also in the tooltip); an empty text hides the bar."""
        self.label.setText(text)
        self.label.setToolTip(text)
        self.setToolTip(text)
        self.setVisible(bool(text))

    def text(self) -> str:
        """The notice shown ('' when hidden)."""
        return "" if self.isHidden() else self.label.text()

    def _act(self) -> None:
        self.hide()
        self.sig_action.emit()
