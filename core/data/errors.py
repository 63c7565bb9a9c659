"""The one error type bad data raises: a message that names the file, the row and the fix."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """The data cannot be used as configured; the message says where and why."""


def require_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` as a Path, checked to exist and hold something."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty")
    return path
