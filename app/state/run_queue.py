"""Several runs one after another on the session's run controller (a rank study, LoRA vs full).

The queue never trains beside another run: it hands the controller its next config
only when the controller is idle, so a run the user starts by hand simply goes first.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from lora_studio.core import RunConfig, TrainResult

from .run_controller import RunController


class RunQueue(QObject):
    """Pending run configs, started in order on a :class:`RunController`."""

    sig_changed = Signal(int)
    """The queue changed (payload: how many runs are waiting, the running one not counted)."""
    sig_batch_finished = Signal(list)
    """The queue ran dry (payload: the run folders it trained since it was last empty, as Paths)."""

    def __init__(self, controller: RunController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._pending: list[RunConfig] = []
        self._mine: Path | None = None  # the folder of the run this queue started, while it runs
        self._done: list[Path] = []
        controller.sig_run_finished.connect(self._on_run_finished)

    def add(self, configs: list[RunConfig]) -> None:
        """Queue ``configs`` (each with its own output.dir); the first starts as soon as nothing runs."""
        self._pending.extend(configs)
        self.sig_changed.emit(len(self._pending))
        self._start_next()

    def pending(self) -> list[RunConfig]:
        """The runs waiting, in order."""
        return list(self._pending)

    def clear(self) -> None:
        """Drop the waiting runs (a run already going goes on; Stop ends it)."""
        self._pending.clear()
        self.sig_changed.emit(0)

    def is_busy(self) -> bool:
        """True while runs wait or one the queue started is going."""
        return bool(self._pending) or self._mine is not None

    def _start_next(self) -> None:
        if self.controller.is_running() or not self._pending:
            return  # the controller's sig_run_finished brings us back
        config = self._pending.pop(0)
        self._mine = Path(config.output.dir)
        self.sig_changed.emit(len(self._pending))
        self.controller.start(config)

    def _on_run_finished(self, result: TrainResult) -> None:
        if self._mine is not None:
            self._done.append(self._mine)
            self._mine = None
        if self._pending:
            # Next turn of the event loop: every other listener of this run's end sees it first.
            QTimer.singleShot(0, self._start_next)
        elif self._done:
            done, self._done = self._done, []
            self.sig_batch_finished.emit(done)
