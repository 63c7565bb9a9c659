"""Reports of unexpected errors: the traceback, the command and the versions, in a new file.

The CLI writes one for an exception that is not a user's mistake (and names it in its one line
on stderr); the window writes one for an exception that reaches its event loop and names it in
a message box.  Nothing here shows anything: the callers do.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPORT_PREFIX = "lora-studio-error-"  # the report file: <run folder or temp>/<prefix><time>-<pid>.log


def write_error_report(details: str, folder: str | Path | None = None,
                       argv: Sequence[str] | None = None) -> Path | None:
    """Write an unexpected error's traceback (with the command and the versions) to a new file in
    ``folder`` when it is an existing folder (a run's), else in the temporary folder; returns its
    path, or None when no file could be written at all."""
    import datetime
    import platform

    try:
        version = metadata.version("lora-studio")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "(not installed)"
    argv = list(sys.argv[1:] if argv is None else argv)
    text = (f"lora-studio {version} error report, {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"command: lora-studio {' '.join(argv)}\n"
            f"python {platform.python_version()} on {platform.platform()}\n{_library_versions()}\n\n"
            f"{details.rstrip()}\n")
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    places = [Path(folder)] if folder is not None and Path(folder).is_dir() else []
    for place in [*places, Path(tempfile.gettempdir())]:
        for n in range(1, 100):
            path = place / f"{REPORT_PREFIX}{stamp}{f'-{n}' if n > 1 else ''}.log"
            try:  # O_EXCL: a new file, never an earlier report; 0o666 less the umask, like the run's files
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError:  # a read-only run folder: the temporary folder instead
                break
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            return path
    return None


def _library_versions() -> str:
    versions = []
    for name in ("torch", "transformers", "peft"):
        module = sys.modules.get(name)  # only what this command imported: a report never imports more
        if module is not None:
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(versions)


__all__ = ["REPORT_PREFIX", "write_error_report"]
