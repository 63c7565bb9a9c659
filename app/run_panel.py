"""W2: Start/Pause/Resume/Stop, live pyqtgraph plots (loss raw+smoothed, val loss/accuracy/perplexity, lr), samples/s, ETA, device memory, log pane, per-layer update-norm view.

A placeholder until its owner fills it in; the main window already places it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class RunPanel(QWidget):
    """Placeholder panel."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("RunPanel"))
