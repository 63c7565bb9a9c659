"""One training run at a time, shared by the Train tab and the run queue.

The controller turns ``train(config, on_event, cancel)`` into Qt signals through
:class:`~.workers.FunctionWorker`; pause, resume and stop are flags on a
:class:`CancelToken` set from the UI thread, so nothing on the UI thread ever waits
for a step.  After the run, the worker thread also rebuilds the trained model from
the run folder, so :meth:`RunController.trained_model` costs the UI nothing.

There is one controller per session (:meth:`RunController.for_session`): the run
panel shows whatever it runs, and the history's queue feeds it, so a queued study
never trains beside a run the user started.

:meth:`RunController.continue_run` resumes a run folder from its newest checkpoint (or
extends a finished run by N steps) with the engine call the CLI's ``resume`` makes
(``resume_run``); its worker first hands back the curves the run logged so far
(``sig_earlier_events``), so the plots continue where they stopped.  When a run ends the
worker also summarises it from its folder (:class:`~.run_summary.RunSummary`), for the card.

Each run gets a :class:`~lora_studio.core.LiveModel` (:attr:`RunController.live_model`): the
trainer lends its model through it between steps, and the Try tab borrows it during a pause.

A run with ``training.processes > 1`` goes through ``launch_processes`` (torchrun, started from
the worker thread) instead of ``train``; it has no live model (its model lives in other
processes).  Such a run cannot hold a pause inside its collectives (gloo and NCCL time out), so
:meth:`RunController.pause` saves a checkpoint and stops its processes (state 'pausing', then
'paused' with no process left), and :meth:`RunController.resume` relaunches them from that
checkpoint; the curves go on in the same run, and ``sig_run_finished`` comes once, at its end.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEventLoop, QObject, QTimer, Signal

from lora_studio.core import (
    CancelToken,
    Failed,
    LiveModel,
    LoadedModel,
    RunConfig,
    TrainingWarning,
    TrainResult,
    launch_processes,
    load_run_config,
    load_trained_run,
    resume_run,
    train,
)

from .run_summary import RunSummary, earlier_events, summarize_run
from .workers import FunctionWorker

IDLE, RUNNING, PAUSED, STOPPING = "idle", "running", "paused", "stopping"
PAUSING = "pausing"  # a run over several processes saving its checkpoint before it stops (then PAUSED)


def launched(config: RunConfig) -> bool:
    """Whether ``config`` trains in several processes (launched under torchrun, not in this one)."""
    return config.training.processes > 1


def pause_note(processes: int) -> str:
    """What Pause does to a run over ``processes`` processes: the Train tab's tooltip and status."""
    return (f"A run over {processes} processes cannot wait inside its collectives (they time out): Pause saves a "
            "checkpoint and stops the processes; Resume relaunches them from it")


@dataclass(frozen=True)
class RunOutcome:
    """What the worker hands back: the engine's result, the trained model (None if it failed) and
    the run's summary (None when the folder could not be read)."""

    result: TrainResult
    model: LoadedModel | None
    summary: RunSummary | None = None


@dataclass(frozen=True)
class EarlierEvents:
    """The worker's first message when it continues a run: the events logged before (not an engine
    event; the controller turns it into ``sig_earlier_events``)."""

    events: list[Any]
    from_step: int  # the step of the checkpoint the run continues from


class RunController(QObject):
    """Starts, pauses, resumes and stops one run; re-emits its events."""

    sig_run_started = Signal(object)
    """A run started (payload: the RunConfig it trains, output.dir is its folder)."""
    sig_event = Signal(object)
    """An engine event of the current run (StepMetrics, EvalMetrics, CheckpointSaved, ...)."""
    sig_state_changed = Signal(str)
    """The run's state changed: 'idle', 'running', 'pausing' (several processes saving before they
    stop), 'paused' or 'stopping'."""
    sig_run_finished = Signal(object)
    """The run ended, however it ended (payload: its TrainResult; status 'failed' on failure)."""
    sig_error = Signal(str, str)
    """The run failed: (message for people, details such as a traceback; may be empty)."""
    sig_earlier_events = Signal(list, int)
    """A continued run's curves so far (StepMetrics and EvalMetrics up to its checkpoint) and the
    checkpoint's step, sent after ``sig_run_started`` and before its first new event."""
    sig_run_continued = Signal(str)
    """A run folder is being resumed or extended (payload: the folder), after ``sig_run_started``."""

    def __init__(self, session: QObject | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._state = IDLE
        self._cancel: CancelToken | None = None
        self._worker: FunctionWorker | None = None
        self._config: RunConfig | None = None
        self._error_sent = False
        self._model: LoadedModel | None = None
        self._result: TrainResult | None = None
        self._summary: RunSummary | None = None
        self._continuing = False
        self._live: LiveModel | None = None
        self._launched = False  # the current run trains in several processes (launch_processes)
        self._parking = False  # a launched run asked to pause: its processes save and stop
        self._parked: RunOutcome | None = None  # a launched run paused: its processes are gone
        # Held off the UI thread by whoever runs or writes the finished run's model (the Try tab's
        # requests, the export dialog's writes): one at a time, so neither sees the other's eval
        # mode, disabled adapters or device move.
        self.model_lock = threading.Lock()

    @classmethod
    def for_session(cls, session: QObject) -> RunController:
        """The session's controller, created on first use (a child of the session)."""
        found = session.findChild(RunController)
        return found if found is not None else cls(session, parent=session)

    # -- public API --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """'idle', 'running', 'pausing', 'paused' or 'stopping'."""
        return self._state

    @property
    def launched(self) -> bool:
        """True when the current (or last) run trains in several processes under torchrun."""
        return self._launched

    @property
    def config(self) -> RunConfig | None:
        """The config of the current (or last) run."""
        return self._config

    @property
    def worker(self) -> FunctionWorker | None:
        """The current (or last) run's worker; a test can give it a thread listener
        (:meth:`FunctionWorker.add_thread_listener`) to see events on the engine's thread, as they
        are reported, not as the UI catches up."""
        return self._worker

    @property
    def live_model(self) -> LiveModel | None:
        """The current run's :class:`~lora_studio.core.LiveModel` (its model lent between steps;
        ``borrow()`` gives None before the model is built and after the run); None before any run."""
        return self._live

    def is_running(self) -> bool:
        """True from :meth:`start` until ``sig_run_finished`` (paused and stopping included)."""
        return self._state != IDLE

    @property
    def continuing(self) -> bool:
        """True when the current (or last) run continues an earlier one (resume or extend)."""
        return self._continuing

    def start(self, config: RunConfig) -> None:
        """Train ``config`` on a worker thread; raises RuntimeError while another run is going."""
        cancel = self._begin(config, continuing=False)
        live = self._live
        if self._launched:
            self._launch(self._run_and_load(lambda on_event: launch_processes(config, on_event, cancel)))
        else:
            self._launch(self._run_and_load(lambda on_event: train(config, on_event, cancel, live=live)))

    def continue_run(self, run_dir: str | Path, extra_steps: int = 0) -> RunConfig:
        """Resume the run in ``run_dir`` from its newest checkpoint, ``extra_steps`` past its end
        when given (the CLI's ``lora-studio resume RUN_DIR --extra-steps N``); returns the config it
        trains.  Raises RuntimeError while another run is going, FileNotFoundError or ValueError
        when ``run_dir`` is not a run folder (nothing starts then)."""
        if extra_steps < 0:
            raise ValueError(f"extra steps must be >= 0, got {extra_steps}")
        config = load_run_config(run_dir)  # one small TOML file: the progress bar needs the new length
        if extra_steps:
            config = config.replace(training=dataclasses.replace(
                config.training, max_steps=config.training.max_steps + extra_steps))
        cancel = self._begin(config, continuing=True)
        folder = str(run_dir)
        live = self._live

        def work(on_event: Callable[[Any], None]) -> TrainResult:
            events, from_step = earlier_events(folder)
            steps = [e.step for e in events]
            on_event(EarlierEvents(events, from_step if from_step is not None else max(steps, default=0)))
            if launched(config):
                return launch_processes(load_run_config(folder), on_event, cancel, resume=True, extra_steps=extra_steps)
            return resume_run(folder, on_event, cancel, extra_steps=extra_steps, live=live)

        self.sig_run_continued.emit(folder)
        self._launch(self._run_and_load(work))
        return config

    def _begin(self, config: RunConfig, *, continuing: bool) -> CancelToken:
        if self.is_running():
            raise RuntimeError("a run is already going; stop it or queue the next one")
        if self._worker is not None:
            self._worker.wait(5_000)  # the previous thread only has its event loop left to quit
        self._config, self._error_sent, self._continuing = config, False, continuing
        self._summary = None
        self._cancel = CancelToken()
        self._launched, self._parking, self._parked = launched(config), False, None
        self._live = None if self._launched else LiveModel()  # a launched run's model is in other processes
        return self._cancel

    def _launch(self, work: Callable[[Callable[[Any], None]], RunOutcome]) -> None:
        self._worker = FunctionWorker(work, parent=self)
        self._worker.sig_event.connect(self._on_event)
        self._worker.sig_finished.connect(self._on_finished)
        self._worker.sig_failed.connect(self._on_crashed)
        self._set_state(RUNNING)
        self.sig_run_started.emit(self._config)
        self._worker.start()

    def pause(self) -> None:
        """Hold the run before its next step; a launched run saves a checkpoint and stops its
        processes instead ('pausing', then 'paused')."""
        if self._state == RUNNING and self._cancel is not None:
            self._cancel.pause()  # a launch takes it as "save and stop" (launch_processes)
            if self._launched:
                self._parking = True
                self._set_state(PAUSING)
            else:
                self._set_state(PAUSED)

    def resume(self) -> None:
        """Let a paused run go on; a launched run's processes are started again from its checkpoint."""
        if self._state != PAUSED:
            return
        if self._parked is not None:
            self._relaunch(self._parked.result.run_dir)
        elif self._cancel is not None:
            self._cancel.resume()
            self._set_state(RUNNING)

    def stop(self) -> None:
        """Ask the run to end after the step in progress (it writes a checkpoint and its adapter);
        a paused launched run, whose processes are already gone, ends at once."""
        if self._parked is not None:
            outcome, self._parked = self._parked, None
            self._on_finished(outcome)
            return
        if self._state in (RUNNING, PAUSED, PAUSING) and self._cancel is not None:
            self._parking = False
            self._cancel.cancel()
            self._set_state(STOPPING)

    def stop_and_wait(self, timeout_ms: int = 30_000) -> bool:
        """Stop the run and wait (the UI keeps processing events) until it ended or ``timeout_ms``
        passed; True when no run is going any more.  For closing the window during a run."""
        if not self.is_running():
            if self._worker is not None:
                self._worker.wait(5_000)  # a run that just ended: its thread only has its event loop left to quit
            return True
        self.stop()
        loop = QEventLoop()
        timer = QTimer(loop)  # owned by the loop: no timer outlives this call
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        self.sig_run_finished.connect(loop.quit)
        timer.start(timeout_ms)
        if self.is_running():
            loop.exec()
        timer.stop()
        self.sig_run_finished.disconnect(loop.quit)
        if not self.is_running() and self._worker is not None:
            self._worker.wait(5_000)
        return not self.is_running()

    def trained_model(self) -> LoadedModel | None:
        """The model of the last run that trained one (adapter attached, final weights), or None."""
        return self._model

    def last_result(self) -> TrainResult | None:
        """The result of the last run that ended."""
        return self._result

    def last_summary(self) -> RunSummary | None:
        """The summary of the last run that ended (None when its worker crashed or its folder could
        not be read); set before ``sig_run_finished``."""
        return self._summary

    # -- private -----------------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self._state = state
        self.sig_state_changed.emit(state)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, EarlierEvents):
            self.sig_earlier_events.emit(event.events, event.from_step)
            return
        if isinstance(event, Failed):
            self._send_error(event.message, event.details)
        self.sig_event.emit(event)
        session_signal = getattr(self.session, "sig_run_event", None)
        if session_signal is not None:
            session_signal.emit(event)

    def _on_finished(self, outcome: RunOutcome) -> None:
        if self._parking and outcome.result.status == "cancelled":  # saved and stopped: paused, not ended
            self._parking, self._parked = False, outcome
            self._set_state(PAUSED)
            return
        self._parking = False
        if outcome.model is not None:
            self._model = outcome.model
        self._summary = outcome.summary
        self._end(outcome.result)

    def _on_crashed(self, message: str, details: str) -> None:
        self._send_error(message, details)
        config = self._config
        total = config.training.max_steps if config else 0
        self._end(TrainResult("failed", 0, total, config.output.dir if config else "", error=message))

    def _relaunch(self, run_dir: str) -> None:
        """Start a paused launched run's processes again from the checkpoint its pause saved."""
        self._parked = None
        self._cancel = cancel = CancelToken()

        def work(on_event: Callable[[Any], None]) -> TrainResult:
            return launch_processes(load_run_config(run_dir), on_event, cancel, resume=True)

        self._worker = FunctionWorker(self._run_and_load(work), parent=self)
        self._worker.sig_event.connect(self._on_event)
        self._worker.sig_finished.connect(self._on_finished)
        self._worker.sig_failed.connect(self._on_crashed)
        self._set_state(RUNNING)
        self._worker.start()

    def _run_and_load(
        self, run: Callable[[Callable[[Any], None]], TrainResult],
    ) -> Callable[[Callable[[Any], None]], RunOutcome]:
        """The worker's function (see :func:`run_and_load`); a launched run stopped to pause is not
        reloaded: it goes on later."""
        return run_and_load(run, reload=lambda: not self._parking)

    def _send_error(self, message: str, details: str) -> None:
        if not self._error_sent:  # a Failed event and a crash of the same run make one dialog
            self._error_sent = True
            self.sig_error.emit(message, details)

    def _end(self, result: TrainResult) -> None:
        self._result = result
        self._cancel = None
        self._set_state(IDLE)
        self.sig_run_finished.emit(result)


def run_and_load(
    run: Callable[[Callable[[Any], None]], TrainResult], reload: Callable[[], bool] = lambda: True,
) -> Callable[[Callable[[Any], None]], RunOutcome]:
    """The worker's function: ``run`` (train, resume or a launch), then rebuild the trained model
    from the run folder (unless ``reload()`` says no) and summarise the run, all off the UI thread."""

    def work(on_event: Callable[[Any], None]) -> RunOutcome:
        result = run(on_event)
        model = None
        if result.status != "failed" and result.checkpoint_dir and reload():
            try:
                model = load_trained_run(result.run_dir)
            except (OSError, ValueError, RuntimeError) as exc:  # the run stands; only the export is lost
                on_event(TrainingWarning(f"could not reload the trained model: {exc}", result.steps))
        try:
            summary = summarize_run(result)
        except (OSError, ValueError, KeyError, TypeError):  # an unreadable folder: the card shows the result only
            summary = None
        return RunOutcome(result, model, summary)

    return work
