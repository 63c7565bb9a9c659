"""Long work off the UI thread: a plain function on a Python thread, its events re-emitted as
signals on the UI thread.

The function is core's usual shape: ``fn(on_event) -> result`` (training also takes a
``CancelToken``, which the caller keeps and sets from the UI thread).  Exceptions become
``sig_failed`` with a readable message; the window stays usable.  (superqt's thread
workers and Orange3's TaskState are the model.)

Why a ``threading.Thread`` and a queue rather than a ``QThread`` with a moved ``QObject``: the
worker thread never calls into Qt at all.  It only puts ``(kind, payload)`` tuples on a
:class:`queue.SimpleQueue`, and a ``QTimer`` owned by this object on the UI thread drains the
queue and emits the signals there.  With a moved QObject every event was a cross-thread signal
emission through shiboken, and every worker a QObject whose thread and Python wrapper could die
in either order; the app's tests saw the process segfault in the UI thread's garbage collector
while a worker loaded a model, and hang with the UI thread painting while a worker built one.
Events reach the UI within one timer tick (:data:`POLL_MS`), in the order they were put.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

# Undoes PySide's per-import source scan before any worker thread imports anything (see the module).
from . import pyside_import_hook  # noqa: F401

POLL_MS = 10
"""How often the UI thread looks for the worker's events while it runs (a frame is 16 ms)."""

_EVENT, _FINISHED, _FAILED = "event", "finished", "failed"


class FunctionWorker(QObject):
    """Runs ``fn(on_event)`` on its own thread; call :meth:`start`.

    It lives on the UI thread; its signals are emitted there, in order, and
    :meth:`is_running` stays true until ``sig_finished`` or ``sig_failed`` has been emitted.
    """

    sig_event = Signal(object)
    """An event the function reported (a core event dataclass, or any object)."""
    sig_finished = Signal(object)
    """The function returned this value."""
    sig_failed = Signal(str, str)
    """The function raised: (one-line message, full traceback text)."""

    def __init__(self, fn: Callable[[Callable[[Any], None]], Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fn = fn
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._listeners: list[Callable[[Any], None]] = []
        self._thread: threading.Thread | None = None
        self._delivered = False  # the final signal was emitted
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._drain)

    def start(self) -> None:
        """Start the work on the worker thread."""
        if self._thread is not None:
            raise RuntimeError("a FunctionWorker runs its function once")
        self._thread = threading.Thread(target=self._run, name="lora-studio-worker", daemon=True)
        self._timer.start()
        self._thread.start()

    def is_running(self) -> bool:
        """True from :meth:`start` until the final signal was emitted on the UI thread."""
        return self._thread is not None and not self._delivered

    def wait(self, msecs: int = 30_000) -> bool:
        """Block the calling (UI) thread until the function returned, then emit what it left;
        False when it is still running after ``msecs`` (tests and shutdown)."""
        if self._thread is None:
            return True
        self._thread.join(max(msecs, 0) / 1000)
        if self._thread.is_alive():
            return False
        self._drain()
        return True

    def add_thread_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(event)`` on the worker thread for each event, as it is reported rather
        than as the UI catches up (tests that must see the engine's own timing).  It must not touch Qt."""
        self._listeners.append(listener)

    def _report(self, event: Any) -> None:  # on the worker thread
        for listener in list(self._listeners):
            listener(event)
        self._queue.put((_EVENT, event))

    def _run(self) -> None:  # on the worker thread: no Qt here
        try:
            result = self._fn(self._report)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a message
            self._queue.put((_FAILED, (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
        else:
            self._queue.put((_FINISHED, result))

    def _drain(self) -> None:  # on the UI thread
        while not self._delivered:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == _EVENT:
                self.sig_event.emit(payload)
                continue
            self._delivered = True
            self._timer.stop()
            if kind == _FINISHED:
                self.sig_finished.emit(payload)
            else:
                self.sig_failed.emit(*payload)
