"""What a run reports, as frozen dataclasses, and the token that stops or pauses it.

The trainer calls ``on_event(event)`` from the thread it runs on; the window's worker
re-emits each event as a Qt signal, the CLI prints it, ``metrics.jsonl`` stores it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step (emitted every ``training.log_every`` steps)."""

    step: int  # steps done, counting from 1
    total_steps: int
    epoch: float  # fractional epochs of training data seen
    loss: float
    learning_rate: float
    grad_norm: float  # before clipping
    samples_per_second: float
    tokens_per_second: float | None  # text tasks only
    memory_bytes: int | None  # the run's peak so far (devices.PeakMemory): CUDA max allocated, CPU RSS growth
    eta_seconds: float


@dataclass(frozen=True)
class EvalMetrics:
    """One evaluation on the validation set."""

    step: int
    loss: float
    accuracy: float | None  # classification
    perplexity: float | None  # language modelling
    is_best: bool  # the lowest loss so far (its adapter is in the run folder's best/)
    # ‖s · B A‖_F of each adapted layer now (LoRA runs; None in full fine-tuning): which layers learn
    layer_update_norms: dict[str, float] | None = None
    # classifiers: confusion[true][predicted] counts over the validation set, rows/columns in class_names order
    confusion: list[list[int]] | None = None
    class_names: list[str] | None = None


@dataclass(frozen=True)
class SampleResult:
    """One fixed sample at one evaluation: a prompt and its generation, or a validation example and
    the label predicted for it."""

    input: str  # the prompt, the example's text, or a description of an image (its path or index)
    output: str  # the generated text, or the predicted label
    target: str | None = None  # classifiers: the true label
    correct: bool | None = None  # classifiers: output == target
    probability: float | None = None  # classifiers: the predicted label's probability


@dataclass(frozen=True)
class Samples:
    """The run's fixed samples (``[samples]`` in the run config) evaluated at one evaluation step."""

    step: int
    items: list[SampleResult]


@dataclass(frozen=True)
class CheckpointSaved:
    """A resumable checkpoint (``kind`` 'step' or 'final') or the best adapter ('best') was written."""

    step: int
    path: str
    kind: str


@dataclass(frozen=True)
class TrainingWarning:
    """Something the user should know that does not stop the run."""

    message: str
    step: int = 0


@dataclass(frozen=True)
class TrainResult:
    """The summary of a run; also written to the run folder as ``result.json``."""

    status: str  # 'finished', 'stopped-early', 'cancelled' or 'failed'
    steps: int
    total_steps: int
    run_dir: str
    final_loss: float | None = None
    best_eval_loss: float | None = None
    best_step: int | None = None
    last_eval: dict[str, Any] | None = None  # loss, accuracy, perplexity of the final evaluation
    adapter_dir: str | None = None  # the final adapter (or the full model in full fine-tuning)
    checkpoint_dir: str | None = None  # the checkpoint to resume or extend from
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    variant: dict[str, Any] = field(default_factory=dict)  # the variant's own summary
    error: str | None = None


@dataclass(frozen=True)
class Finished:
    """The run ended (finished, stopped early or cancelled); ``result`` says how."""

    result: TrainResult


@dataclass(frozen=True)
class Failed:
    """The run could not go on; ``message`` is for people, ``kind`` for code."""

    message: str
    kind: str  # 'config', 'data', 'nonfinite', 'out-of-memory' or 'error'
    step: int = 0
    details: str = ""  # a stack trace for unexpected errors


Event = StepMetrics | EvalMetrics | Samples | CheckpointSaved | TrainingWarning | Finished | Failed


class CancelToken:
    """Set from any thread; the trainer checks it between steps.

    ``cancel()`` ends the run after the current step (a checkpoint is written first);
    ``pause()`` holds it between steps until ``resume()`` (or ``cancel()``).
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        """Ask the run to stop after the step in progress."""
        self._cancelled.set()
        self._running.set()  # a paused run must wake up to stop

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._cancelled.is_set()

    def pause(self) -> None:
        """Hold the run between steps."""
        self._running.clear()

    def resume(self) -> None:
        """Let a paused run go on."""
        self._running.set()

    @property
    def paused(self) -> bool:
        """True while paused."""
        return not self._running.is_set()

    def wait_while_paused(self, poll_seconds: float = 0.2) -> None:
        """Block while paused (the trainer calls this between steps)."""
        while not self._running.wait(poll_seconds):
            pass
