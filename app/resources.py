"""Icons and style sheets, found through package resources so an installed copy finds them too.

The files live in ``resources/`` at the repository root, which installs as the data package
``lora_studio.resources`` (``pyproject.toml``: package-dir and package-data).  Reading them
with :func:`importlib.resources.files` works the same from a source checkout, an editable
install, a wheel and a PyInstaller bundle — no path arithmetic relative to ``__file__``.

For the main window::

    app.setWindowIcon(app_icon())
    app.setStyleSheet(style_sheet("light"))   # or "dark"
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from PySide6.QtCore import QDir
from PySide6.QtGui import QIcon, QImage, QPixmap

from .state.project_files import THEMES

RESOURCES_PACKAGE = "lora_studio.resources"
APP_ICON = "lora-studio"  # icons/lora-studio.svg and its rendered icons/lora-studio.png
STYLE_IMAGES_PREFIX = "studio-styles"  # style sheets name their images url(studio-styles:check-dark.svg)


def resource(relative: str) -> Traversable:
    """A file of the resources package, e.g. ``resource("styles/dark.qss")``; FileNotFoundError names it."""
    item = resources.files(RESOURCES_PACKAGE).joinpath(*relative.split("/"))
    if not item.is_file():
        raise FileNotFoundError(f"LoRA Studio resource {relative!r} is missing from {RESOURCES_PACKAGE}")
    return item


def icon(name: str) -> QIcon:
    """The icon ``icons/<name>.svg`` with its PNG rendering as a fallback size (read as bytes, so it
    also works where resources are not plain files, e.g. inside a zip)."""
    result = QIcon()
    for suffix in ("svg", "png"):
        try:
            data = resource(f"icons/{name}.{suffix}").read_bytes()
        except FileNotFoundError:
            continue
        image = QImage.fromData(data, suffix.upper())
        if not image.isNull():
            result.addPixmap(QPixmap.fromImage(image))
    if result.isNull():
        raise FileNotFoundError(f"no readable icon {name!r} in {RESOURCES_PACKAGE}/icons")
    return result


def app_icon() -> QIcon:
    """LoRA Studio's application icon (window, task bar, about box)."""
    return icon(APP_ICON)


def style_sheet(theme: str = THEMES[0]) -> str:
    """The Qt style sheet of ``theme`` (one of :data:`THEMES`: light or dark)."""
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)}; got {theme!r}")
    return resource(f"styles/{theme}.qss").read_text(encoding="utf-8")


def register_style_images() -> bool:
    """Let style sheets find their images (check marks) as ``url(studio-styles:NAME)``: Qt reads a
    style sheet's images from files, so the search path is the resources' ``styles`` folder.  False
    where that folder is not on the file system (resources inside a zip): the sheet then draws its
    boxes without the images, which still shows every box's edge."""
    folder = resources.files(RESOURCES_PACKAGE).joinpath("styles")
    path = Path(str(folder))
    if not path.is_dir():
        return False
    if str(path) not in QDir.searchPaths(STYLE_IMAGES_PREFIX):
        QDir.addSearchPath(STYLE_IMAGES_PREFIX, str(path))
    return True
