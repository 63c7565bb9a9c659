"""One small layout helper shared by the data panel and the export dialog."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QWidget


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side in one form row: line edits stretch, a lone button sits on the right."""
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    if len(widgets) == 1 and not isinstance(widgets[0], QLineEdit):
        layout.addStretch(1)
    for widget in widgets:
        layout.addWidget(widget, 1 if isinstance(widget, QLineEdit) else 0)
    return holder
