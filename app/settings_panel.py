"""W1: variant (registry) + description + generated settings form; rank, alpha, dropout, init, lr, steps, batch, grad accumulation, precision, device; validation as you type.

A placeholder until its owner fills it in; the main window already places it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class SettingsPanel(QWidget):
    """Placeholder panel."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("SettingsPanel"))
