"""What the Try tab tries, and its requests: predictions and generations, base and adapted, off the UI thread.

Three sources of a model (:class:`~.try_sources.TrySource`), offered as they appear:

* ``live`` — the model the session's run is training, lent by the run's
  :class:`~lora_studio.core.LiveModel` (``RunController.live_model``); offered from the run's
  first pause until it ends; each request borrows it between two steps (``with live.borrow() as
  parts``), on the run's device under its autocast, so a paused run is tried as it stands and a
  resumed one lets the request go before its next step;
* ``trained`` — the last finished run's model (``RunController.trained_model()``);
* ``opened`` — a run folder, adapter folder or merged export opened from disk
  (:func:`~.try_sources.open_for_trying`).

The newest source to appear becomes the one tried (a pause brings the live model, a run's end the
trained one, Open… the opened one); :meth:`TryRunner.select` picks another.  Models rebuilt from a
folder run where their run trained (:func:`~.try_device.try_device_for`).

Each request (:meth:`TryRunner.predict`, :meth:`TryRunner.generate`) runs core's ``predict`` or
``generate_stream`` on a :class:`~.workers.FunctionWorker` with its own
:class:`~lora_studio.core.CancelToken`: a new request cancels the one before (its late results
are dropped), :meth:`TryRunner.stop` ends a generation within one token.  One lock lets one
request at a time touch a model (eval mode and disabled adapters are the model's state, not the
call's).  Streamed pieces come in batches of at most ~1/30 s, so a fast model cannot flood the UI.

What the workers need is imported at the top (PIL for images included): a worker thread that
imports a module for the first time through PySide's import hook deadlocked against the UI thread
before.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image  # noqa: F401 - imported here, not first by a worker (see above)
from PySide6.QtCore import QObject, QTimer, Signal

from lora_studio.core import (
    CancelToken,
    GeneratedPiece,
    GenerationSettings,
    LoadedModel,
    RunConfig,
    StepMetrics,
    TrainResult,
    generate_stream,
    predict,
)

from .run_controller import PAUSED, STOPPING, RunController
from .try_device import TryDevice, try_device_for
from .try_sources import (
    KINDS,
    LIVE,
    NOTHING_TO_TRY,
    OPENED,
    TRAINED,
    GenerationOutcome,
    NoModelError,
    PredictOutcome,
    TryFailure,
    TrySource,
    carries_adapter,
    has_chat_template,
    open_for_trying,
    readable,
)
from .workers import FunctionWorker

LIVE_RETRY_MS = 500  # a run paused before its model was lent: how soon to look again
BATCH_SECONDS = 1 / 30  # streamed pieces reach the UI at most ~30 times a second


@dataclass(frozen=True)
class _Pieces:
    request: int
    pieces: tuple[GeneratedPiece, ...]


@dataclass(frozen=True)
class _LiveFacts:
    run: int  # which run the facts are of (a late answer about an earlier run is dropped)
    task: str
    has_chat_template: bool
    has_adapter: bool  # False in full fine-tuning: nothing to switch off


@dataclass(frozen=True)
class _Opened:
    request: int
    source: TrySource


@dataclass
class _Request:
    id: int
    cancel: CancelToken
    kind: str  # "predict" or "generate"
    source: str  # the kind of source it runs (a live request ends when the run stops)


class TryRunner(QObject):
    """The Try tab's state: the sources, the one tried, and the requests' workers."""

    sig_sources_changed = Signal(list)
    """The sources on offer changed (payload: list[TrySource], in the order live, trained, opened)."""
    sig_source_changed = Signal(object)
    """The source tried changed (payload: TrySource, or None when there is nothing to try)."""
    sig_busy_changed = Signal(bool)
    """A request started (True) or the last one ended (False)."""
    sig_opening = Signal(str)
    """A folder started opening (payload: its path) or finished ('')."""
    sig_predictions = Signal(object)
    """A prediction request's answer (payload: PredictOutcome)."""
    sig_pieces = Signal(list)
    """The current generation's newest pieces, in order (payload: list[GeneratedPiece])."""
    sig_generation_finished = Signal(object)
    """The current generation ended (payload: GenerationOutcome)."""
    sig_error = Signal(str)
    """A request or an open failed (payload: one readable line)."""

    def __init__(self, controller: RunController | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._sources: dict[str, TrySource] = {}
        self._current: str | None = None
        self._next_id = 0
        self._request: _Request | None = None  # the request whose answers are shown
        self._open_id = 0  # the newest open: an older one that ends later is dropped
        self._workers: list[FunctionWorker] = []  # held until their threads end (Qt aborts otherwise)
        # One request at a time runs a model, and never beside an export of the same model.
        self._model_lock = controller.model_lock if controller is not None else threading.Lock()
        self._run = 0  # counts the controller's runs: the live source belongs to one
        self._live_probing = False
        self._last_step: int | None = None
        self.last_details = ""  # the traceback of the last failure, for a details button
        if controller is not None:
            controller.sig_run_started.connect(self._on_run_started)
            controller.sig_state_changed.connect(self._on_run_state)
            controller.sig_event.connect(self._on_run_event)
            controller.sig_run_finished.connect(self._on_run_finished)
            if controller.trained_model() is not None:
                self._set_trained(controller.trained_model(), controller.config, controller.last_result())
            if controller.is_running():
                self._on_run_state(controller.state)

    # -- sources -----------------------------------------------------------------------------------
    def sources(self) -> list[TrySource]:
        """What the tab can try now, in the order live, trained, opened."""
        return [self._sources[k] for k in KINDS if k in self._sources]

    def current(self) -> TrySource | None:
        """The source tried now (None: nothing to try yet)."""
        return self._sources.get(self._current) if self._current else None

    def select(self, kind: str) -> None:
        """Try the source of ``kind`` ('live', 'trained' or 'opened'); unknown kinds are ignored."""
        if kind in self._sources and kind != self._current:
            self._current = kind
            self._drop_request()
            self.sig_source_changed.emit(self.current())

    def open_folder(self, path: str | Path) -> None:
        """Open the run folder, adapter folder or merged export at ``path`` on a worker; it becomes
        the ``opened`` source (``sig_error`` says why when it cannot be opened)."""
        self._open_id += 1
        request = self._open_id
        folder = str(path)

        def work(_on_event: Callable[[Any], None]) -> _Opened | TryFailure:
            try:
                loaded, config, what = open_for_trying(folder)
                device = try_device_for(config)
            except Exception as exc:  # noqa: BLE001 - an unreadable folder is a message, never a traceback
                return TryFailure(request, f"Cannot open {folder}: {readable(exc)}", traceback.format_exc())
            name = Path(folder).name or folder
            title = f"Opened {what} {name} ({device.describe()})"
            return _Opened(request, TrySource(OPENED, title, loaded.task, loaded, device, has_chat_template(loaded),
                                              folder, device.note, carries_adapter(loaded)))

        self.sig_opening.emit(folder)
        self._launch(work, self._on_opened)

    def try_model(self, loaded: LoadedModel, title: str, *, config: RunConfig | None = None,
                  folder: str = "") -> TrySource:
        """Try ``loaded`` (an adapter attached) as the ``opened`` source, on ``config``'s device (the
        run's, else ``auto``); for a model opened elsewhere, and for tests."""
        device = try_device_for(config)
        source = TrySource(OPENED, f"{title} ({device.describe()})", loaded.task, loaded, device,
                           has_chat_template(loaded), folder, device.note, carries_adapter(loaded))
        self._sources[OPENED] = source
        self._announce(OPENED)
        return source

    # -- requests ----------------------------------------------------------------------------------
    def predict(self, inputs: Sequence[Any], top_k: int = 3) -> int | None:
        """Predict ``inputs`` (texts, or image paths) with the source tried, adapted and base; the
        answer comes as ``sig_predictions``.  Returns the request's id (None when nothing can be tried)."""
        source = self._ready()
        if source is None:
            return None
        if not inputs:
            self.sig_error.emit("Nothing to predict: type one input per line, or add images")
            return None
        request = self._begin("predict", source.kind)
        items = list(inputs)

        def work(_on_event: Callable[[Any], None]) -> PredictOutcome | TryFailure:
            try:
                with self._model_of(source) as (loaded, device, step):
                    if request.cancel.cancelled:
                        return PredictOutcome(request.id, [], top_k, step)
                    found = predict(loaded, items, top_k=top_k, compare_base=True, device=device.device,
                                    autocast=device.autocast, cancel=request.cancel)
                return PredictOutcome(request.id, list(found), top_k, step)
            except Exception as exc:  # noqa: BLE001 - a failing model is a message in the tab
                return TryFailure(request.id, readable(exc), traceback.format_exc())

        self._launch(work, self._on_request_done)
        return request.id

    def generate(self, prompt: str, settings: GenerationSettings = GenerationSettings()) -> int | None:
        """Generate from ``prompt`` with the source tried, base and adapted interleaved; pieces come as
        ``sig_pieces`` (batched), the end as ``sig_generation_finished``.  Returns the request's id."""
        source = self._ready()
        if source is None:
            return None
        problem = settings.problem()
        if problem:
            self.sig_error.emit(problem[0].upper() + problem[1:])
            return None
        request = self._begin("generate", source.kind)

        def work(on_event: Callable[[Any], None]) -> GenerationOutcome | TryFailure:
            texts: dict[str, list[str]] = {"adapted": [], "base": []}
            try:
                with self._model_of(source) as (loaded, device, step):
                    for batch in batched_pieces(generate_stream(loaded, prompt, settings, device=device.device,
                                                          autocast=device.autocast, cancel=request.cancel),
                                          request.cancel):
                        for piece in batch:
                            texts.setdefault(piece.which, []).append(piece.text)
                        on_event(_Pieces(request.id, batch))
                return GenerationOutcome(request.id, {k: "".join(v) for k, v in texts.items()},
                                         request.cancel.cancelled, step)
            except Exception as exc:  # noqa: BLE001
                return TryFailure(request.id, readable(exc), traceback.format_exc())

        self._launch(work, self._on_request_done, self._on_pieces)
        return request.id

    def stop(self) -> None:
        """End the request in progress: a generation stops within one token (what it wrote stays)."""
        if self._request is not None:
            self._request.cancel.cancel()

    def is_busy(self) -> bool:
        """True while a request's answer is awaited."""
        return self._request is not None

    def wait_idle(self, timeout_ms: int = 30_000) -> bool:
        """Cancel what runs and wait for every worker thread to end (closing, tests); True when none runs."""
        self.stop()
        deadline = time.monotonic() + timeout_ms / 1000
        for worker in list(self._workers):
            left = max(int((deadline - time.monotonic()) * 1000), 1)
            worker.wait(left)
        self._prune()
        return not self._workers

    # -- the run controller's signals -------------------------------------------------------------
    def _on_run_started(self, _config: RunConfig) -> None:
        self._run += 1
        self._last_step = None
        self._live_probing = False
        self._drop(LIVE)

    def _on_run_state(self, state: str) -> None:
        if state == PAUSED:
            self._probe_live()
        elif state == STOPPING and self._request is not None and self._request.source == LIVE:
            self._request.cancel.cancel()  # the run hands its model back when it ends: let it go now
        if LIVE in self._sources:
            self._update_live_title()

    def _on_run_event(self, event: object) -> None:
        if isinstance(event, StepMetrics):
            self._last_step = event.step
        if self.controller is not None and self.controller.state == PAUSED and LIVE not in self._sources:
            self._probe_live()  # paused before the model was built: it is lent now

    def _on_run_finished(self, result: TrainResult) -> None:
        self._live_probing = False
        self._drop(LIVE)
        model = self.controller.trained_model() if self.controller is not None else None
        previous = self._sources.get(TRAINED)
        if model is not None and (previous is None or previous.loaded is not model):
            self._set_trained(model, self.controller.config, result)

    def _live_model(self) -> Any:
        return getattr(self.controller, "live_model", None)

    def _probe_live(self) -> None:
        """Learn the live model's task on a worker (borrowing waits for the step in progress)."""
        live = self._live_model()
        if live is None or self._live_probing or LIVE in self._sources:
            return
        if not live.available:  # paused while the model is still being built: look again shortly
            if self.controller is not None and self.controller.state == PAUSED:
                QTimer.singleShot(LIVE_RETRY_MS, self, self._probe_if_paused)
            return
        self._live_probing = True
        run = self._run

        def work(_on_event: Callable[[Any], None]) -> _LiveFacts | None:
            try:
                with live.borrow() as parts:
                    if parts is None:
                        return None
                    return _LiveFacts(run, parts.loaded.task, has_chat_template(parts.loaded),
                                      carries_adapter(parts.loaded))
            except Exception:  # noqa: BLE001 - no live source then; the run's own errors reach the Train tab
                return None

        self._launch(work, self._on_live_probed)

    def _probe_if_paused(self) -> None:
        if self.controller is not None and self.controller.state == PAUSED:
            self._probe_live()

    def _on_live_probed(self, facts: _LiveFacts | None) -> None:
        self._live_probing = False
        if not isinstance(facts, _LiveFacts) or facts.run != self._run:
            return
        if self.controller is None or not self.controller.is_running():
            return
        config = self.controller.config
        folder = config.output.dir if config is not None else ""
        self._sources[LIVE] = TrySource(LIVE, "", facts.task, has_chat_template=facts.has_chat_template,
                                        folder=folder, has_adapter=facts.has_adapter)
        self._update_live_title(announce=False)
        self._announce(LIVE)

    def _update_live_title(self, *, announce: bool = True) -> None:
        source = self._sources[LIVE]
        name = Path(source.folder).name or "the run"
        state = self.controller.state if self.controller is not None else ""
        live = self._live_model()
        step = max(self._last_step or 0, live.step if live is not None and hasattr(live, "step") else 0)
        where = (f"paused at step {step}" if state == PAUSED
                 else f"training, step {step}: each try waits for the step in progress")
        title = f"Live run {name}: {where}"
        if title == source.title:
            return
        self._sources[LIVE] = replace(source, title=title)
        if announce:
            self.sig_sources_changed.emit(self.sources())
            if self._current == LIVE:
                self.sig_source_changed.emit(self.current())

    def _set_trained(self, model: LoadedModel, config: RunConfig | None, result: TrainResult | None) -> None:
        device = try_device_for(config)
        name = Path(config.output.dir).name if config is not None else "the last run"
        ended = f", {result.status.replace('-', ' ')} at step {result.steps}" if result is not None else ""
        title = f"Finished run {name}{ended} ({device.describe()})"
        self._sources[TRAINED] = TrySource(TRAINED, title, model.task, model, device, has_chat_template(model),
                                           config.output.dir if config is not None else "", device.note,
                                           carries_adapter(model))
        self._announce(TRAINED)

    def _announce(self, kind: str) -> None:
        """A new source: offered, and tried (the newest source is the one the user wants to see)."""
        self._current = kind
        self._drop_request()  # its answer would belong to the model tried before
        self.sig_sources_changed.emit(self.sources())
        self.sig_source_changed.emit(self.current())

    def _drop(self, kind: str) -> None:
        if self._sources.pop(kind, None) is None:
            return
        if self._current == kind:
            remaining = self.sources()
            self._current = remaining[0].kind if remaining else None
            self._drop_request()
        self.sig_sources_changed.emit(self.sources())
        self.sig_source_changed.emit(self.current())

    def _drop_request(self) -> None:
        """Cancel the request in progress and forget it: its late answer is not shown."""
        if self._request is not None:
            self._request.cancel.cancel()
            self._request = None
            self.sig_busy_changed.emit(False)

    # -- workers -----------------------------------------------------------------------------------
    def _ready(self) -> TrySource | None:
        source = self.current()
        if source is None:
            self.sig_error.emit(NOTHING_TO_TRY)
        return source

    def _begin(self, kind: str, source: str) -> _Request:
        if self._request is not None:
            self._request.cancel.cancel()  # a new Run replaces the old one: it ends within a batch or a token
        self._next_id += 1
        self._request = _Request(self._next_id, CancelToken(), kind, source)
        self.sig_busy_changed.emit(True)
        return self._request

    @contextmanager
    def _model_of(self, source: TrySource) -> Iterator[tuple[LoadedModel, TryDevice, int | None]]:
        """On the worker: the source's model, device and (live) step, held for the whole request."""
        with self._model_lock:
            if source.kind != LIVE:
                _move_to(source.loaded, source.device.device)
                yield source.loaded, source.device, None
                return
            live = self._live_model()
            if live is None:
                raise NoModelError("The run no longer lends its model; try the finished run instead")
            with live.borrow() as parts:
                if parts is None:
                    raise NoModelError("The run ended before its model could be tried; try the finished run")
                yield parts.loaded, TryDevice(parts.device, parts.autocast), parts.step

    def _launch(self, work: Callable[[Callable[[Any], None]], Any], on_done: Callable[[Any], None],
                on_event: Callable[[Any], None] | None = None) -> FunctionWorker:
        self._prune()
        worker = FunctionWorker(work, parent=self)
        worker.sig_finished.connect(on_done)
        worker.sig_failed.connect(self._on_crashed)
        if on_event is not None:
            worker.sig_event.connect(on_event)
        self._workers.append(worker)
        worker.start()
        return worker

    def _prune(self) -> None:
        self._workers = [w for w in self._workers if w.is_running()]

    def _on_pieces(self, event: object) -> None:
        if isinstance(event, _Pieces) and self._request is not None and event.request == self._request.id:
            self.sig_pieces.emit(list(event.pieces))

    def _on_request_done(self, outcome: object) -> None:
        request = self._request
        if request is None or getattr(outcome, "request", None) != request.id:
            return  # a cancelled request's late answer: a newer one is shown
        self._request = None
        if isinstance(outcome, TryFailure):
            self.last_details = outcome.details
            self.sig_error.emit(outcome.message)
        elif isinstance(outcome, PredictOutcome):
            self._note_step(outcome.step)
            self.sig_predictions.emit(outcome)
        elif isinstance(outcome, GenerationOutcome):
            self._note_step(outcome.step)
            self.sig_generation_finished.emit(outcome)
        self.sig_busy_changed.emit(False)

    def _note_step(self, step: int | None) -> None:
        if step is not None and LIVE in self._sources and self._current == LIVE:
            self._last_step = step
            self._update_live_title()

    def _on_opened(self, outcome: object) -> None:
        if getattr(outcome, "request", None) != self._open_id:
            return
        self.sig_opening.emit("")
        if isinstance(outcome, TryFailure):
            self.last_details = outcome.details
            self.sig_error.emit(outcome.message)
        elif isinstance(outcome, _Opened):
            self._sources[OPENED] = outcome.source
            self._announce(OPENED)

    def _on_crashed(self, message: str, details: str) -> None:
        # Work functions turn their own errors into TryFailure; this is a bug's last net.
        self.last_details = details
        self.sig_error.emit(message)
        if self._request is not None:
            self._request = None
            self.sig_busy_changed.emit(False)


def _move_to(loaded: LoadedModel, device: torch.device) -> None:
    """Put a rebuilt model on the device its run trained on (it is rebuilt on the CPU), once."""
    first = next(iter(loaded.model.parameters()), None)
    if first is not None and first.device != device:
        loaded.model.to(device)


def batched_pieces(pieces: Iterator[GeneratedPiece], cancel: CancelToken, *,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[tuple[GeneratedPiece, ...]]:
    """``pieces`` in batches: a batch goes out once :data:`BATCH_SECONDS` passed since the last one
    (a slow model's every piece at once), the rest at the end.  After a cancel, two more pieces at
    most (each side's ``done`` marker), then the stream is left."""
    batch: list[GeneratedPiece] = []
    last = clock()
    after_cancel = 0
    for piece in pieces:
        if cancel.cancelled:
            after_cancel += 1
            if after_cancel > 2:
                break
        batch.append(piece)
        now = clock()
        if now - last >= BATCH_SECONDS:
            yield tuple(batch)
            batch, last = [], now
    if batch:
        yield tuple(batch)

