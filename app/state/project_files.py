"""Projects and remembered settings.

A project is the run config saved as TOML (``RunConfig.save``): the layer tree's selection
*is* ``[lora].targets`` (with ``rank_pattern``/``alpha_pattern``), so the TOML alone reopens
the same selection; the CLI can train a project file as it is (``lora-studio train PROJECT.toml``).

:class:`StudioSettings` keeps what belongs to the user rather than to a project, with
``QSettings`` (an INI file in the user's config folder): recent projects, last folders per
purpose, theme, window geometry and dock layout.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from lora_studio.core import RunConfig

ORGANIZATION, APPLICATION = "LoRA Studio", "studio"
MAX_RECENT = 8
PROJECT_FILTER = "LoRA Studio projects (*.toml)"
THEMES = ("light", "dark")  # the window's themes (a style sheet each in resources/styles); the first is the default


def save_project(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` to ``path`` (atomically; ``.toml`` added when missing)."""
    path = Path(path)
    if path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    return config.save(path)


def open_project(path: str | Path) -> RunConfig:
    """Read a project (any ``RUN.toml``); a bad file raises ValueError/FileNotFoundError with a message."""
    return RunConfig.load(path)


def default_run_dir(name: str) -> str:
    """Where a run named ``name`` writes by default: the user's app-data folder, not the working folder."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
    return str(Path(base or Path.home() / ".lora-studio") / "runs" / name)


class StudioSettings:
    """Typed access to the user's QSettings."""

    def __init__(self) -> None:
        self._q = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)

    # recent projects
    def recent_projects(self) -> list[str]:
        """Recently opened or saved projects, newest first, existing files only."""
        paths = self._q.value("projects/recent", [], type=list) or []
        return [p for p in paths if Path(p).is_file()]

    def add_recent_project(self, path: str | Path) -> None:
        """Put ``path`` first in the recent list (at most MAX_RECENT kept)."""
        path = str(Path(path).resolve())
        paths = [path] + [p for p in self.recent_projects() if p != path]
        self._q.setValue("projects/recent", paths[:MAX_RECENT])

    # last folders, per purpose ("project", "model", "data", "export")
    def last_folder(self, purpose: str) -> str:
        """The folder a file dialog for ``purpose`` last used (the home folder at first)."""
        return str(self._q.value(f"folders/{purpose}", str(Path.home())))

    def has_last_folder(self, purpose: str) -> bool:
        """True once a file dialog for ``purpose`` has chosen a folder."""
        return self._q.contains(f"folders/{purpose}")

    def set_last_folder(self, purpose: str, folder: str) -> None:
        self._q.setValue(f"folders/{purpose}", folder)

    # theme
    def theme(self) -> str:
        value = str(self._q.value("ui/theme", THEMES[0]))
        return value if value in THEMES else THEMES[0]

    def set_theme(self, theme: str) -> None:
        self._q.setValue("ui/theme", theme)

    # window layout
    def window_state(self) -> tuple[QByteArray | None, QByteArray | None]:
        """(geometry, dock/toolbar state) saved when the window last closed."""
        return self._q.value("window/geometry"), self._q.value("window/state")

    def set_window_state(self, geometry: QByteArray, state: QByteArray) -> None:
        self._q.setValue("window/geometry", geometry)
        self._q.setValue("window/state", state)

    def splitter_state(self, name: str) -> QByteArray | None:
        """The saved sizes of the window's splitter ``name`` (QSplitter.saveState), or None."""
        return self._q.value(f"window/splitter/{name}")

    def set_splitter_state(self, name: str, state: QByteArray) -> None:
        self._q.setValue(f"window/splitter/{name}", state)

    def sync(self) -> None:
        """Write to disk now (tests, and before the process exits)."""
        self._q.sync()
