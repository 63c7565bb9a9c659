"""The model a run is training, lent to other threads between steps (the Try tab during a pause).

The trainer holds :meth:`LiveModel.training` around each step and evaluation; a reader holds
:meth:`LiveModel.borrow`, so it never sees weights half-way through an optimizer step, and the
run never waits on a reader for longer than one call (a paused run waits anyway).  Plain
``threading``: core knows nothing of Qt.
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
        self._lock = threading.RLock()
        self._parts: LiveParts | None = None
        self._step = 0

    def publish(self, loaded: LoadedModel, device: torch.device,
                autocast: Callable[[], AbstractContextManager]) -> None:
        """The trainer lends its model (once it is built and on its device)."""
        with self._lock:
            self._parts = LiveParts(loaded, device, autocast, self._step)

    def withdraw(self) -> None:
        """The run ended: readers get None from now on."""
        with self._lock:
            self._parts = None

    @property
    def available(self) -> bool:
        """True while a run lends its model."""
        return self._parts is not None

    @contextmanager
    def training(self, step: int) -> Iterator[None]:
        """Held by the trainer around one step (or evaluation); ``step`` is the steps done before it."""
        with self._lock:
            self._step = step
            yield
            self._step = step + 1

    @contextmanager
    def borrow(self) -> Iterator[LiveParts | None]:
        """The run's model between steps (None when no run lends one); the run waits meanwhile."""
        with self._lock:
            parts = self._parts
            yield None if parts is None else LiveParts(parts.loaded, parts.device, parts.autocast, self._step)
