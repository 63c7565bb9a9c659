"""The autosave: the project being edited, written every 30 s while it has unsaved changes and on
every model change, so a crash loses nothing.

The file is the run config as TOML (``autosave.toml``, the same format as a project) beside a
small JSON note (``autosave.json``: which project it belongs to, when it was written).  It sits
in the user's settings folder (beside ``studio.ini``), so it follows ``QSettings``' per-user
location — and the tests' isolated settings folder.  Saving the project, or closing with
"Discard", removes it; an autosave still there at the next start means the last session ended
without either, and :func:`pending_restore` offers it when it is newer than its project file.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QTimer

from lora_studio.core import RunConfig

from .project_files import APPLICATION, ORGANIZATION
from .session import StudioSession

AUTOSAVE_INTERVAL_MS = 30_000
CONFIG_NAME, NOTE_NAME = "autosave.toml", "autosave.json"


def autosave_folder() -> Path:
    """The per-user folder of the autosave: the folder of the user's ``studio.ini``."""
    settings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)
    return Path(settings.fileName()).parent


@dataclass(frozen=True)
class AutosavedWork:
    """An autosave found at start: its config, the project it belongs to (None: never saved), when written."""

    config: RunConfig
    project: Path | None
    written_at: float  # seconds since the epoch


def pending_restore(folder: Path | None = None) -> AutosavedWork | None:
    """The autosave to offer at start: one that reads, and is newer than its project file's last
    save (or belongs to no project); None otherwise.  A file that does not read is ignored."""
    folder = folder or autosave_folder()
    config_path, note_path = folder / CONFIG_NAME, folder / NOTE_NAME
    if not config_path.is_file():
        return None
    try:
        note = json.loads(note_path.read_text(encoding="utf-8")) if note_path.is_file() else {}
        config = RunConfig.load(config_path)
    except (OSError, ValueError):
        return None
    project = Path(note["project"]) if note.get("project") else None
    written_at = float(note.get("written_at", config_path.stat().st_mtime))
    if project is not None and project.is_file() and project.stat().st_mtime >= written_at:
        return None  # the project was saved after the autosave: nothing newer to restore
    return AutosavedWork(config, project, written_at)


class Autosaver(QObject):
    """Writes the session's config to the autosave while it has unsaved changes."""

    def __init__(self, session: StudioSession, folder: Path | None = None, parent: QObject | None = None,
                 interval_ms: int = AUTOSAVE_INTERVAL_MS) -> None:
        super().__init__(parent)
        self.session = session
        self.folder = folder or autosave_folder()
        self._written: RunConfig | None = None  # what the file holds, so an unchanged config is not rewritten
        self.timer = QTimer(self, interval=interval_ms)
        self.timer.timeout.connect(self.save_if_modified)
        self.timer.start()
        session.sig_model_loaded.connect(lambda _loaded: self.save_if_modified())
        session.sig_modified_changed.connect(lambda modified: None if modified else self.discard())

    @property
    def config_path(self) -> Path:
        """Where the autosaved config is written."""
        return self.folder / CONFIG_NAME

    def save_if_modified(self) -> bool:
        """Write the config when it has unsaved changes not yet autosaved; True when written."""
        config = self.session.config
        if not self.session.is_modified() or config == self._written:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            config.save(self.config_path)
            project = self.session.project_path
            note = {"project": str(project) if project else None, "written_at": time.time()}
            (self.folder / NOTE_NAME).write_text(json.dumps(note), encoding="utf-8")
        except OSError:
            return False  # a full or read-only disk must not interrupt editing; the next tick tries again
        self._written = copy.deepcopy(config)
        return True

    def discard(self) -> None:
        """Remove the autosave (the work was saved, or the user chose to discard it)."""
        for name in (CONFIG_NAME, NOTE_NAME):
            (self.folder / name).unlink(missing_ok=True)
        self._written = None
