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

Staging names carry the writer's pid (``.lora-studio-tmp-<pid>-<kind>-…``), so the next write
into a folder can tell a killed writer's leftovers from a live one's and remove them
(:func:`remove_stale_staging`); a folder swap cut between its two renames is put back.

What lands in place has the permissions a plain write would give it (``0666 & ~umask`` for a new
file, the old mode for a replaced one, ``0777 & ~umask`` for a folder), never the 0600/0700 of a
temporary file or of safetensors' own ``save_file``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_TMP_PREFIX = ".lora-studio-tmp-"  # adapter names cannot start with '.', so staging never collides with one
# <pid>-<kind>-<rest>: file (atomic_path), stage (staged_folder), new (replace_folder's new folder),
# was (replace_folder's previous folder, renamed aside: <rest> is the target's name).
_STAGING = re.compile(r"^\.lora-studio-tmp-(\d+)-(file|stage|new|was)-(.+)$")
_OLD_SWAP = re.compile(r"^\.lora-studio-tmp-old-(.+)-\d+$")  # before pids were in the names


def _staging_prefix(kind: str) -> str:
    return f"{_TMP_PREFIX}{os.getpid()}-{kind}-"


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


def _new_file_beside(target: Path) -> Path:
    """An empty, freshly named file in ``target``'s folder, with the permissions a plain write gives.

    Not ``tempfile.mkstemp``: it creates files 0600, and the rename would carry that over, so weights
    and projects came out unreadable to the group beside 0644 JSON.  Created with mode 0666 the
    kernel applies the umask (and a folder's default ACL) itself -- no ``os.umask`` round trip, which
    would change it for every thread for a moment.  Replacing a file keeps that file's mode, as
    writing into it would.
    """
    for _ in range(100):
        path = target.parent / f"{_staging_prefix('file')}{secrets.token_hex(6)}{target.suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            try:
                mode = stat.S_IMODE(os.stat(target).st_mode)
            except OSError:
                mode = None  # a new file: the umask decided
            if mode is not None and hasattr(os, "fchmod"):  # os.fchmod is POSIX only
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


def _new_folder_beside(target: Path) -> Path:
    """A freshly named empty folder beside ``target``, with a plain ``mkdir``'s permissions (not
    ``mkdtemp``'s 0700: the folder becomes the export itself)."""
    for _ in range(100):
        path = target.parent / f"{_staging_prefix('new')}{target.name}-{secrets.token_hex(6)}"
        try:
            path.mkdir(0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


def _plain_file_mode(folder: Path) -> int:
    """The permission bits a plain write gives a new file in ``folder`` (umask, default ACL): read off
    a probe file, as reading the umask would mean setting it for every thread for a moment."""
    probe = _new_file_beside(folder / "probe")
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink(missing_ok=True)


def _give_mode(path: Path, target: Path, plain: int) -> None:
    """Give ``path`` the mode ``target`` has (it is being replaced), else ``plain``: whatever a writer
    used (safetensors' ``save_file`` makes its files 0600), the result is what a plain write makes."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = plain
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; when the block succeeds it replaces ``target``.

    For writers that insist on a file name (``safetensors.torch.save_file``).  If the block
    raises, the temporary file is removed and ``target`` is exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    tmp = _new_file_beside(target)
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        yield tmp
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # the writer replaced the file (safetensors' save_file: 0600)
            os.chmod(tmp, mode)
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
    remove_stale_staging(folder)
    stage = Path(tempfile.mkdtemp(prefix=_staging_prefix("stage"), dir=folder))
    try:
        yield stage
        written = sorted(p for p in stage.iterdir() if p.is_file())
        plain = _plain_file_mode(stage)
        for path in written:
            fsync_file(path)
            _give_mode(path, folder / path.name, plain)
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
    remove_stale_staging(target.parent)
    stage = _new_folder_beside(target)
    try:
        yield stage
        plain = _plain_file_mode(stage)
        for path in stage.rglob("*"):
            if path.is_file():
                if stat.S_IMODE(path.stat().st_mode) != plain:  # a writer's own mode (save_file: 0600)
                    os.chmod(path, plain)
                fsync_file(path)
        old = None
        if target.exists():
            old = target.parent / f"{_staging_prefix('was')}{target.name}"
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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts; unknown means alive)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_stale_staging(folder: str | os.PathLike[str],
                         alive: Callable[[int], bool] = process_alive) -> list[Path]:
    """Remove the staging entries in ``folder`` whose writer is no longer ``alive``; return them.

    A previous folder that a killed :func:`replace_folder` had renamed aside is renamed back when
    its target is missing (the swap was cut between its two renames), so the last complete copy
    survives.  Entries of a live writer are left alone.
    """
    folder = Path(folder)
    try:
        entries = [p for p in folder.iterdir() if is_staging_name(p.name)]
    except OSError:
        return []
    removed = []
    for path in sorted(entries):
        match, old = _STAGING.match(path.name), _OLD_SWAP.match(path.name)
        if match and alive(int(match.group(1))):
            continue
        was = match.group(3) if match and match.group(2) == "was" else old.group(1) if old else None
        if was is not None and not (folder / was).exists():
            os.replace(path, folder / was)
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_file",
    "fsync_folder",
    "is_staging_name",
    "process_alive",
    "remove_stale_staging",
    "replace_folder",
    "staged_folder",
]
