"""W2: run history with configs and curves, overlay of 2+ runs, run queue (rank study, LoRA vs full) compared on one plot with trainable counts.

A placeholder until its owner fills it in; the main window already places it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class HistoryPanel(QWidget):
    """Placeholder panel."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("HistoryPanel"))
