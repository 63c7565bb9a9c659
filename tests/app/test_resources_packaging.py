"""Desktop integration files: the desktop entry names the shipped icon, the PyInstaller spec is sound."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_desktop_entry_opens_the_studio_with_its_icon() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive in desktop entries
    entry.read(ROOT / "packaging" / "lora-studio.desktop", encoding="utf-8")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application" and section["Name"] == "LoRA Studio"
    assert section["Terminal"] == "false"
    assert (ROOT / "resources" / "icons" / f"{section['Icon']}.svg").is_file()
    assert (ROOT / "resources" / "icons" / f"{section['Icon']}.png").is_file()
    assert section["Categories"].endswith(";")


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_desktop_entry_validates() -> None:
    subprocess.run(["desktop-file-validate", str(ROOT / "packaging" / "lora-studio.desktop")], check=True)


def test_pyinstaller_spec_parses_and_bundles_the_resources() -> None:
    spec = (ROOT / "packaging" / "lora_studio.spec").read_text(encoding="utf-8")
    ast.parse(spec)  # a spec is Python run by PyInstaller
    assert 'collect_data_files("lora_studio.resources"' in spec
    assert (ROOT / "packaging" / "pyinstaller_entry.py").is_file()
    assert "packaging/lora_studio.spec" in (ROOT / "README.md").read_text(encoding="utf-8")
