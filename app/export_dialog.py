"""W3: export dialog: adapter (PEFT format) or merged model (safetensors / transformers folder),
precision choice; after writing, reload the export, run a batch and show the largest difference.

A placeholder until its owner fills it in.
"""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QLabel, QVBoxLayout, QWidget

from .session import StudioSession


class ExportDialog(QDialog):
    """Placeholder dialog."""

    def __init__(self, session: StudioSession, model=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.model = model  # the trained model (base + adapter) to export
        QVBoxLayout(self).addWidget(QLabel("Export"))
