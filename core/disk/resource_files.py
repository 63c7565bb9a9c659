"""Where the shipped demo files live (``resources/`` at the repository root).

An editable install and a source checkout both find them beside ``core/``;
``LORA_STUDIO_RESOURCES`` points elsewhere (a bundled app sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

_DEFAULT = Path(__file__).resolve().parents[2] / "resources"  # core/disk/ -> the repository root


def resources_dir() -> Path:
    """The resources folder; ``FileNotFoundError`` with a hint when it cannot be found."""
    folder = Path(os.environ.get("LORA_STUDIO_RESOURCES", _DEFAULT))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LoRA Studio's resources folder {folder} does not exist; set LORA_STUDIO_RESOURCES to the "
            "repository's resources/ folder"
        )
    return folder


def demo_file(name: str) -> Path:
    """A file of ``resources/demo``, checked to exist (the message names the script that makes it)."""
    path = resources_dir() / "demo" / name
    if not path.is_file():
        script = "make_story_demo.py" if name.startswith("story/") else "make_demo_files.py"
        raise FileNotFoundError(f"demo file {path} is missing; run resources/{script} to recreate it")
    return path
