"""W1: total/trainable/percent, adapter file size, training memory estimate with device warning; updates instantly.

A placeholder until its owner fills it in; the main window already places it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class CountsPanel(QWidget):
    """Placeholder panel."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("CountsPanel"))
