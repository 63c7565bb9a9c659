"""The model a run is training, lent to other threads between steps (the Try tab during a pause).

The trainer holds :meth:`LiveModel.training` around each step, evaluation and save; a reader
holds :meth:`LiveModel.borrow`, so it never sees weights half-way through an optimizer step.
A reader that asks while a step runs gets the model as soon as that step ends (a waiting reader
goes before the next step), and the run waits for at most one reader's call per step; a paused
run waits between steps anyway, so a pause lends the model for as long as it lasts.  Readers take turns
(one at a time: each may switch the model to eval mode and back).  Plain ``threading``: core
knows nothing of Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch

from ..models import LoadedModel


@dataclass(frozen=True)
class LiveParts:
    """What a reader needs to run the training model: it, its device and the run's autocast."""

    loaded: LoadedModel  # the model on the run's device, adapter attached (eval mode is the reader's to set)
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    step: int  # steps done when the reader took it


class LiveModel:
    """Shared by a run and its readers; pass one to ``train(..., live=...)``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._parts: LiveParts | None = None
        self._step = 0
        self._trainer: int | None = None  # the thread id inside training(), while it is
        self._wants = False  # the trainer waits to start a step
        self._reading = False  # a reader holds the model
        self._lent = False  # a reader took it since the trainer's last step
        self._waiting = 0  # readers waiting for it

    def publish(self, loaded: LoadedModel, device: torch.device,
                autocast: Callable[[], AbstractContextManager], step: int = 0) -> None:
        """The trainer lends its model (once it is built, on its device, and a resume's checkpoint
        is loaded); ``step`` is the steps done so far."""
        with self._cond:
            self._step = step
            self._parts = LiveParts(loaded, device, autocast, step)
            self._cond.notify_all()

    def withdraw(self) -> None:
        """The run ended: readers get None from now on (a reader still holding it finishes first)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._reading)
            self._parts = None
            self._cond.notify_all()

    @property
    def available(self) -> bool:
        """True while a run lends its model."""
        return self._parts is not None

    @property
    def waiting_readers(self) -> int:
        """Readers waiting for the step in progress to end."""
        return self._waiting

    @property
    def step(self) -> int:
        """Steps done by the run that lends (or last lent) the model."""
        return self._step

    @contextmanager
    def training(self, step: int, *, after: int | None = None) -> Iterator[None]:
        """Held by the trainer around one step (or an evaluation or save); ``step`` is the steps
        done before it, ``after`` those done after it (default ``step + 1``; an evaluation passes
        ``after=step``).  Waits for a reader holding the model, and lets waiting readers go first."""
        me = threading.get_ident()
        if self._trainer == me:  # nested (a save inside an evaluation): already held
            yield
            return
        with self._cond:
            # Readers that waited through the last step get one turn first; then the trainer goes,
            # so a stream of readers cannot hold the run up for longer than one call.
            self._wants = True
            self._cond.wait_for(lambda: not self._reading and (self._waiting == 0 or self._lent))
            self._wants = self._lent = False
            self._trainer, self._step = me, step
        done = False
        try:
            yield
            done = True
        finally:
            with self._cond:
                self._trainer = None
                if done:  # a step that raised did not happen: readers see the steps done before it
                    self._step = step + 1 if after is None else after
                self._cond.notify_all()

    @contextmanager
    def borrow(self) -> Iterator[LiveParts | None]:
        """The run's model between steps (None when no run lends one); the run waits meanwhile.

        Called from the training thread itself (an ``on_event`` callback), it lends at once: the
        step that called back is that thread's own.
        """
        if self._trainer == threading.get_ident():
            parts = self._parts
            yield None if parts is None else LiveParts(parts.loaded, parts.device, parts.autocast, self._step)
            return
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: self._trainer is None and not self._reading
                                    and not (self._wants and self._lent))
            finally:
                self._waiting -= 1
            parts = self._parts
            self._reading = parts is not None
            self._lent = self._lent or self._reading
            if parts is not None:
                parts = LiveParts(parts.loaded, parts.device, parts.autocast, self._step)
        try:
            yield parts
        finally:
            if parts is not None:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
