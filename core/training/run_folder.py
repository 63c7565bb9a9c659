"""One process owns a run folder at a time, and what a killed run left behind is cleared.

The lock is an OS-level file lock (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows)
on ``.lora-studio.lock`` inside the folder, held for the run's whole life.  The operating
system drops it when the process dies, however it dies, so a crash never leaves a folder
locked.  Who holds it (pid, host, start time) is written beside it in
``.lora-studio-owner.json``, because a failed attempt at the lock truncates the lock file
itself; a second run is refused with those facts.  Everything that deletes or rewrites a
run's files (``overwrite``, a resume, the window's queue and rank study, which all go through
:func:`~.trainer.train`) happens while the lock is held.

Under ``torchrun`` only rank 0 takes the lock (only it writes); the others learn its answer
from a broadcast, so they refuse together.

Leftovers: a run killed mid-write leaves the staging files of :mod:`..disk.atomic_files`.
Once the lock is held nothing else writes here, so every staging entry in the run's folders
is stale and :func:`clear_leftovers` removes it (a folder swap cut between its two renames
is put back first, so the last complete checkpoint is never lost).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from ..disk.atomic_files import atomic_write_json, remove_stale_staging

LOCK_FILE = ".lora-studio.lock"
OWNER_FILE = ".lora-studio-owner.json"
# The sub-folders a run writes (besides the folder itself): where staging can be left.
_WRITTEN_FOLDERS = ("checkpoints", "adapter", "best")


class RunFolderBusy(ValueError):
    """Another process holds the run folder (a user mistake: the CLI reports it, exit 2)."""


class RunFolderLock:
    """The lock on one run folder; ``acquire`` refuses at once (no waiting) when it is held."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = FileLock(str(self.folder / LOCK_FILE), timeout=0, thread_local=False)

    def acquire(self) -> None:
        """Take the lock and record this process as its owner; :class:`RunFolderBusy` when taken."""
        make_run_folder(self.folder)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunFolderBusy(busy_message(self.folder)) from None
        atomic_write_json(self.folder / OWNER_FILE, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        })

    def release(self) -> None:
        """Give the lock up (the owner record goes first, so nobody reads a stale one)."""
        if self._lock.is_locked:
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def make_run_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents); an existing *file* of that name is refused by name."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output.dir {folder} is a file, not a folder; choose another output.dir "
                                 "(or move the file away)")
    folder.mkdir(parents=True, exist_ok=True)


def busy_message(folder: Path) -> str:
    """Why ``folder`` cannot be used now: the holder's pid, host and start time, and what to do."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        who = f"process {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # between its lock and its record, or damaged
        who = "another process"
    return (f"{folder} is in use by another run ({who}); wait for it to finish or stop it, or choose another "
            "output.dir")


def clear_leftovers(folder: Path) -> list[Path]:
    """Remove the staging files and folders a killed write left in a run folder; return them.

    Call only while holding the folder's lock: then no live writer's staging can be among them.
    """
    removed: list[Path] = []
    for place in (folder, *(folder / name for name in _WRITTEN_FOLDERS)):
        if place.is_dir():
            removed += remove_stale_staging(place, alive=lambda pid: False)
    return removed


__all__ = ["LOCK_FILE", "OWNER_FILE", "RunFolderBusy", "RunFolderLock", "busy_message", "clear_leftovers",
           "make_run_folder"]
