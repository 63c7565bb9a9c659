"""Long work off the UI thread: a plain function on a QThread, its events re-emitted as signals.

The function is core's usual shape: ``fn(on_event) -> result`` (training also takes a
``CancelToken``, which the caller keeps and sets from the UI thread).  Exceptions become
``sig_failed`` with a readable message; the window stays usable.  (superqt's thread
workers and Orange3's TaskState are the model.)
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal


class FunctionWorker(QObject):
    """Runs ``fn(on_event)`` on its own thread; call :meth:`start`."""

    sig_event = Signal(object)
    """An event the function reported (a core event dataclass, or any object)."""
    sig_finished = Signal(object)
    """The function returned this value."""
    sig_failed = Signal(str, str)
    """The function raised: (one-line message, full traceback text)."""

    def __init__(self, fn: Callable[[Callable[[Any], None]], Any], parent: QObject | None = None) -> None:
        super().__init__()
        self._fn = fn
        self._thread = QThread(parent)
        self.moveToThread(self._thread)
        self._thread.started.connect(self._run)
        self.sig_finished.connect(self._thread.quit)
        self.sig_failed.connect(self._thread.quit)

    def start(self) -> None:
        """Start the work on the worker thread."""
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the thread ends (tests and shutdown)."""
        return self._thread.wait(msecs)

    def _run(self) -> None:
        try:
            result = self._fn(self.sig_event.emit)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a message
            self.sig_failed.emit(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        else:
            self.sig_finished.emit(result)
