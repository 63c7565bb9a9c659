"""Events as a terminal progress bar (stderr) and a summary (stdout), for the CLI."""

from __future__ import annotations

import sys
from typing import TextIO

from .events import CheckpointSaved, EvalMetrics, Event, Failed, Samples, StepMetrics, TrainingWarning, TrainResult

SAMPLE_WIDTH = 100  # a sample's line is cut here: the terminal shows what it is, metrics.jsonl keeps it whole


class ProgressPrinter:
    """A tqdm bar that follows step events; evaluations, checkpoints and warnings print above it.

    ``details``: print an unexpected failure's traceback too (the CLI writes it to a report file
    instead, unless debugging).  ``stream`` is where the bar and the notes go (stderr by default).
    """

    def __init__(self, enabled: bool = True, *, details: bool = False, stream: TextIO | None = None,
                 mininterval: float = 0.1) -> None:
        self.enabled = enabled
        self.details = details
        self._stream = stream
        self._mininterval = mininterval  # tqdm's redraw interval (0: every step, for tests)
        self._bar = None

    def show(self, event: Event) -> None:
        """Render one event."""
        if isinstance(event, StepMetrics):
            if not self.enabled:
                return
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=event.total_steps, initial=event.step - 1, unit="step", file=self.stream,
                                 dynamic_ncols=True, mininterval=self._mininterval)
            self._bar.total = event.total_steps
            # The postfix first: update() redraws, and the line it draws must show this step's loss and lr
            # with this step's count (set after, they appeared one redraw late: one step behind, issue 15).
            self._bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.learning_rate:.2e}", refresh=False)
            self._bar.update(event.step - self._bar.n)
        elif isinstance(event, EvalMetrics):
            extra = (f", accuracy {event.accuracy:.1%}" if event.accuracy is not None else "") + (
                f", perplexity {event.perplexity:.2f}" if event.perplexity is not None else "")
            best = " (best)" if event.is_best else ""
            self._write(f"step {event.step}: validation loss {event.loss:.4f}{extra}{best}")
        elif isinstance(event, Samples):
            for item in event.items:
                self._write(f"  sample: {sample_line(item.input, item.output, item.correct)}")
        elif isinstance(event, CheckpointSaved) and event.kind != "best":
            self._write(f"step {event.step}: checkpoint {event.path}")
        elif isinstance(event, TrainingWarning):
            self._write(f"warning: {event.message}")
        elif isinstance(event, Failed) and event.details and self.details:
            self._write(event.details.rstrip())

    @property
    def stream(self) -> TextIO:
        """Where the bar and the notes are written (looked up each time: tests swap sys.stderr)."""
        return self._stream if self._stream is not None else sys.stderr

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)

    def summary(self, result: TrainResult) -> None:
        """The outcome, on stdout (what a script would read)."""
        self.close()
        print(f"{result.status}: {result.steps}/{result.total_steps} steps in {result.seconds:.1f} s; "
              f"final loss {result.final_loss if result.final_loss is None else round(result.final_loss, 4)}")
        if result.adapter_dir:
            # Full fine-tuning saves the whole model where a LoRA run saves its adapter: say which it is.
            from .trained_run import holds_whole_model

            whole = holds_whole_model(result.adapter_dir)
            print(f"model: {result.adapter_dir} (the whole fine-tuned model)" if whole
                  else f"adapter: {result.adapter_dir}")
        if result.checkpoint_dir:
            print(f"checkpoint: {result.checkpoint_dir} (lora-studio resume {result.run_dir})")

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def sample_line(given: str, output: str, correct: bool | None) -> str:
    """One sample on one line: ``input -> output`` (classifiers: with a right/wrong mark), cut to fit."""
    mark = "" if correct is None else (" [right]" if correct else " [wrong]")
    text = f"{' '.join(given.split())!r} -> {' '.join(output.split())!r}{mark}"
    return text if len(text) <= SAMPLE_WIDTH else text[:SAMPLE_WIDTH - 1] + "…"
