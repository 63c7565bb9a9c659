"""Atomic writes: a crash in the middle of saving never leaves a half-written file behind.

Every write goes to a temporary file *in the same folder* (a rename is only atomic
within one file system), is flushed and fsynced, and only then renamed over the
target with :func:`os.replace`.  Until that rename the previous file is untouched;
after it the new one is complete.  The folder is fsynced too, so the rename itself
survives a power cut.

Multi-file saves (an adapter's weights, config and metadata) use
:func:`staged_folder`: every file is written into a hidden staging folder first,
and the finished files are renamed into place one after another only when all of
them were written.  The expensive part, writing, can fail or be killed at any
point without touching the previous files; what remains is a window of a few
renames.  :func:`replace_folder` swaps a whole folder (a ``save_pretrained``
export) with two renames, keeping the old one until the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP_PREFIX = ".lora-studio-tmp-"  # adapter names cannot start with '.', so staging never collides with one


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a finished file's bytes to disk before it is renamed into place."""
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block succeeds it replaces ``target``.

    For writers that insist on a file name (``safetensors.torch.save_file``).  If the block
    raises, the temporary file is removed and ``target`` is exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging folder; when the block succeeds, move every file in it into ``folder``.

    Files already in ``folder`` and not written by the block are left alone (a default
    adapter's folder also holds the sub-folders of other adapters).  If the block raises,
    the staging folder is deleted and ``folder`` is untouched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=folder))
    try:
        yield stage
        written = sorted(p for p in stage.iterdir() if p.is_file())
        for path in written:
            fsync_file(path)
        fsync_folder(stage)
        for path in written:
            os.replace(path, folder / path.name)
        fsync_folder(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def replace_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh sibling folder to fill; when the block succeeds it becomes ``target``.

    An existing ``target`` is first renamed aside and deleted only once the new folder is in
    place, so at every instant one complete folder exists under one of the two names.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + target.name + "-", dir=target.parent))
    try:
        yield stage
        for path in stage.rglob("*"):
            if path.is_file():
                fsync_file(path)
        old = None
        if target.exists():
            old = target.parent / f"{_TMP_PREFIX}old-{target.name}-{os.getpid()}"
            os.replace(target, old)
        os.replace(stage, target)
        fsync_folder(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def is_staging_name(name: str) -> bool:
    """True for the temporary names these helpers create (readers skip them)."""
    return name.startswith(_TMP_PREFIX)


__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_file",
    "fsync_folder",
    "is_staging_name",
    "replace_folder",
    "staged_folder",
]
