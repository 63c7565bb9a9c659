"""Checking every data file off the UI thread: core's ``check_data`` on a worker, newest result only.

The data panel asks for a check after each data change; a folder of thousands of photos
takes seconds to decode, so the check runs on a :class:`FunctionWorker`, reports progress,
and a newer request cancels the older one (core's check polls ``cancelled`` between files).
Only the answer to the newest request is emitted: a slow old check can never overwrite a
newer one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from lora_studio.core import CheckCancelled, DataCheck, DataConfig, DataError, check_data

from .workers import FunctionWorker


@dataclasses.dataclass(frozen=True)
class DataCheckResult:
    """The answer to one check request: what was checked, and the result or the reason there is none."""

    generation: int
    data: DataConfig
    check: DataCheck | None
    error: str | None = None


def check_key(data: DataConfig) -> DataConfig:
    """The part of a data config a check depends on (the bad-images choice only changes what
    training does with the bad files, not which they are)."""
    return dataclasses.replace(data, bad_images="error")


def run_check(generation: int, data: DataConfig, cancelled: Callable[[], bool],
              on_event: Callable[[Any], None]) -> DataCheckResult | None:
    """Worker side: ``check_data`` with progress events ``(generation, done, total)``; None when cancelled."""
    try:
        check = check_data(data, cancelled=cancelled,
                           on_progress=lambda done, total: on_event((generation, done, total)))
    except CheckCancelled:
        return None
    except (DataError, OSError) as exc:  # core's message names the file and the fix
        return DataCheckResult(generation, data, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure must reach the user as a message, not a crash
        return DataCheckResult(generation, data, None, f"{type(exc).__name__}: {exc}")
    return DataCheckResult(generation, data, check)


class DataChecker(QObject):
    """Runs :func:`check_data` for the newest data config on a worker thread."""

    sig_checked = Signal(object)
    """The newest request's answer (payload: :class:`DataCheckResult`)."""
    sig_progress = Signal(int, int)
    """Files checked so far and in all, for the newest request."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._answered = 0
        self._workers: list[FunctionWorker] = []  # kept alive until their threads end
        self.last: DataCheckResult | None = None

    def check(self, data: DataConfig) -> int:
        """Start checking ``data`` (an older check still running is told to stop); returns its number."""
        self._generation += 1
        generation = self._generation
        self._forget_finished()

        def cancelled() -> bool:  # read on the worker thread: a plain int comparison, no Qt
            return self._generation != generation

        worker = FunctionWorker(lambda on_event: run_check(generation, data, cancelled, on_event))
        # Bound methods of this QObject: Qt queues the calls to the UI thread (a lambda would run on the worker's).
        worker.sig_finished.connect(self._on_finished)
        worker.sig_event.connect(self._on_progress)
        self._workers.append(worker)
        worker.start()
        return generation

    def is_checking(self) -> bool:
        """True until the newest request has been answered."""
        return self._answered != self._generation

    def stop(self, msecs: int = 30_000) -> bool:
        """Cancel whatever runs and block until every worker thread has ended (shutdown, tests)."""
        self._generation += 1  # whatever runs is stale now: it stops at its next file
        self._answered = self._generation  # and nothing is awaited any more
        return all(worker.wait(msecs) for worker in list(self._workers))

    def _forget_finished(self) -> None:
        self._workers = [w for w in self._workers if w.is_running()]

    def _on_progress(self, event: tuple[int, int, int]) -> None:
        generation, done, total = event
        if generation == self._generation:
            self.sig_progress.emit(done, total)

    def _on_finished(self, result: DataCheckResult | None) -> None:
        if result is None or result.generation != self._generation:
            return  # cancelled, or a newer request is on its way
        self._answered = result.generation
        self.last = result
        self.sig_checked.emit(result)
