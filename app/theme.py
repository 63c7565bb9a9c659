"""Light and dark themes: Qt's Fusion style with a matching palette, plus the studio's style sheet.

The palette does the heavy lifting (every widget, including ones a style sheet forgets);
the style sheet from ``resources/styles`` adds the studio's own touches when it is present.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from .state.project_files import THEMES

DARK_COLORS = {
    QPalette.ColorRole.Window: "#2b2d31",
    QPalette.ColorRole.WindowText: "#e6e6e6",
    QPalette.ColorRole.Base: "#1f2023",
    QPalette.ColorRole.AlternateBase: "#26282c",
    QPalette.ColorRole.Text: "#e6e6e6",
    QPalette.ColorRole.Button: "#34363b",
    QPalette.ColorRole.ButtonText: "#e6e6e6",
    QPalette.ColorRole.Highlight: "#3d7bd9",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.ToolTipBase: "#34363b",
    QPalette.ColorRole.ToolTipText: "#e6e6e6",
    QPalette.ColorRole.PlaceholderText: "#8a8d93",
    QPalette.ColorRole.Mid: "#8a8d93",
}


def palette_for(theme: str) -> QPalette:
    """The palette of ``theme`` (one of :data:`THEMES`): Fusion's standard one (light) or the studio's dark one."""
    from PySide6.QtWidgets import QStyleFactory

    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)}; got {theme!r}")

    palette = QStyleFactory.create("Fusion").standardPalette()
    if theme == "dark":
        for role, color in DARK_COLORS.items():
            palette.setColor(role, QColor(color))
        palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6b6e74"))
        palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6b6e74"))
    return palette


def apply_theme(app: QApplication | None, theme: str) -> None:
    """Apply ``theme`` (one of :data:`THEMES`) to the whole application."""
    if app is None:
        return
    app.setStyle("Fusion")
    app.setPalette(palette_for(theme))
    try:
        from .resources import register_style_images, style_sheet  # the palette alone is enough without them
    except ImportError:
        return
    register_style_images()
    try:
        app.setStyleSheet(style_sheet(theme))
    except (FileNotFoundError, ValueError):
        app.setStyleSheet("")
