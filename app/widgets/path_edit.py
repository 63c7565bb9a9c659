"""``PathEdit``: a line edit with a Browse… button for a file or a folder, remembering the last
folder per purpose (``StudioSettings.last_folder``)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from ..state.project_files import StudioSettings


class PathEdit(QWidget):
    """A line edit with a Browse… button (file or folder); remembers the last folder in QSettings."""

    def __init__(self, placeholder: str, *, folder: bool = False, file_filter: str = "", key: str = "model") -> None:
        super().__init__()
        self.edit = QLineEdit(placeholderText=placeholder)
        button = QPushButton("Browse…")
        button.clicked.connect(self._browse)
        self._folder, self._filter, self._key = folder, file_filter, key
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(button)

    def text(self) -> str:
        return self.edit.text().strip()

    def _browse(self) -> None:
        settings = StudioSettings()
        start = settings.last_folder(self._key)
        if self._folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        else:
            path = QFileDialog.getOpenFileName(self, "Choose a file", start, self._filter)[0]
        if path:
            self.edit.setText(path)
            settings.set_last_folder(self._key, str(Path(path).parent if not self._folder else path))
