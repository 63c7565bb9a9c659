"""Open the studio window: ``python -m lora_studio.app`` or ``lora-studio studio``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Start the Qt application with the main window; returns the exit code."""
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(list(argv if argv is not None else sys.argv))
    window = MainWindow()
    window.show()
    return app.exec()
