"""Icons and style sheets come through package resources, so an installed copy finds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lora_studio.app.resources import RESOURCES_PACKAGE, THEMES, app_icon, resource, style_sheet

ROOT = Path(__file__).resolve().parents[2]


def test_icon_and_style_sheets_load(qtbot) -> None:
    icon = app_icon()
    assert not icon.isNull()
    image = icon.pixmap(64, 64).toImage()
    assert image.width() == 64 and image.pixelColor(32, 32).alpha() == 255  # drawn, not blank
    for theme in THEMES:
        assert "QPushButton" in style_sheet(theme)
    with pytest.raises(ValueError, match="theme must be one of light, dark"):
        style_sheet("sepia")
    with pytest.raises(FileNotFoundError, match="'icons/nope.svg' is missing"):
        resource("icons/nope.svg")


def test_png_is_the_svg_rendered(qtbot) -> None:
    from PySide6.QtGui import QImage

    png = QImage(str(ROOT / "resources/icons/lora-studio.png"))
    assert (png.width(), png.height()) == (256, 256)


def test_resources_are_read_through_the_package_not_the_checkout() -> None:
    """importlib.resources resolves the package the install maps (editable here: the checkout)."""
    from importlib import resources

    assert Path(str(resources.files(RESOURCES_PACKAGE))).resolve() == (ROOT / "resources").resolve()


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")
def test_the_wheel_ships_icons_styles_and_demo_files(tmp_path: Path) -> None:
    # A copy of the sources, so the build leaves nothing in the checkout; --no-build-isolation:
    # the suite runs offline and setuptools comes from the environment.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("core", "app", "resources"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("lora_studio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("lora_studio/resources/__init__.py", "lora_studio/resources/icons/lora-studio.svg",
                   "lora_studio/resources/icons/lora-studio.png", "lora_studio/resources/styles/light.qss",
                   "lora_studio/resources/styles/dark.qss", "lora_studio/resources/demo/sentences.csv",
                   "lora_studio/resources/demo/digits_cnn.safetensors", "lora_studio/app/resources.py"):
        assert needed in names, needed
