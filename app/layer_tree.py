"""W1: QTreeView over describe(); tri-state checks, greyed unwrappable layers with reason tooltips, filter (text/regex) with live match count, quick selections, subtree select, per-layer rank/alpha -> rank_pattern/alpha_pattern.

A placeholder until its owner fills it in; the main window already places it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class LayerTreePanel(QWidget):
    """Placeholder panel."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("LayerTreePanel"))
