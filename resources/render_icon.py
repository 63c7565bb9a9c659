"""Render the application icon's PNG from its SVG with Qt: ``python resources/render_icon.py``.

The PNG serves where SVG is not read (the desktop entry's icon themes, Windows/macOS
bundles); redraw the SVG, then run this to refresh it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parent / "icons"


def render(svg: Path, png: Path, size: int = 256) -> Path:
    """Draw ``svg`` into a transparent ``size``×``size`` PNG at ``png``."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(png)):
        raise OSError(f"could not write {png}")
    return png


if __name__ == "__main__":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    print(render(ICONS / "lora-studio.svg", ICONS / "lora-studio.png"))
