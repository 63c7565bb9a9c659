"""What a run that ended comes to, read back from its folder: the summary card's numbers.

Qt-free and file-based on purpose: everything here is in the run folder already
(``metrics.jsonl``, the adapter folder, ``checkpoints/``), so a run from the command line or
an earlier session is summarised the same way as one that just ended.  The run controller
builds a :class:`RunSummary` on its worker thread (it reads files), the card only shows it.

The "before" value is the engine's evaluation at step 0 (``training.eval_at_start``): a fresh
adapter starts as the identity (B = 0), so it scores the base model with the run's head.  It is
taken with the adapter attached, not disabled, because a PiSSA adapter moves part of the base
weight into itself: with it disabled the model is not the base.  For a classifier the summary also
holds each class's recall at the first and the last evaluation (core's ``class_changes`` of their
confusion matrices), largest improvement first: which classes the run taught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core import (
    CheckpointSaved,
    ClassChange,
    EvalMetrics,
    Failed,
    Finished,
    StepMetrics,
    TrainResult,
    latest_checkpoint,
    class_changes,
    read_metrics,
)

RESUMABLE = ("cancelled", "failed", "incomplete")  # ended before max_steps: continue to the end
EXTENDABLE = ("finished", "stopped-early")  # reached its end: train N more steps


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation as the card shows it."""

    step: int
    loss: float
    accuracy: float | None
    perplexity: float | None

    @property
    def metric_name(self) -> str:
        """'accuracy', 'perplexity' or 'loss': the headline number of this task."""
        return "accuracy" if self.accuracy is not None else "perplexity" if self.perplexity is not None else "loss"

    @property
    def metric(self) -> float:
        """The headline number (accuracy as a fraction)."""
        if self.accuracy is not None:
            return self.accuracy
        return self.perplexity if self.perplexity is not None else self.loss


@dataclass(frozen=True)
class RunSummary:
    """A run that ended: how, before/after, best step, time, adapter size, where its files are."""

    status: str  # 'finished', 'stopped-early', 'cancelled' or 'failed'
    steps: int
    total_steps: int
    run_dir: Path
    before: EvalPoint | None  # the evaluation at step 0 (None: training.eval_at_start was off)
    after: EvalPoint | None  # the last evaluation
    best_step: int | None
    best_loss: float | None
    seconds: float  # wall time of every part of the run (a resumed run adds its parts)
    adapter_dir: Path | None
    adapter_bytes: int | None  # the adapter folder on disk (full fine-tuning: the model file)
    checkpoint_dir: Path | None  # what Resume or Extend continues from
    error: str | None = None
    # classifiers: each class's recall at the first and the last evaluation, largest improvement first
    class_changes: tuple[ClassChange, ...] = ()

    @property
    def continuation(self) -> str | None:
        """'resume' (it ended early and has a checkpoint), 'extend' (it reached its end) or None."""
        return continuation_for(self.status, self.checkpoint_dir)


def continuation_for(status: str, checkpoint: Path | None) -> str | None:
    """How a run with this status and newest checkpoint can go on: 'resume', 'extend' or None."""
    if checkpoint is None:
        return None
    if status in RESUMABLE:
        return "resume"
    return "extend" if status in EXTENDABLE else None


def run_continuation(run_dir: str | Path) -> str | None:
    """How the run in ``run_dir`` can go on ('resume', 'extend' or None), read from its folder:
    its last Finished/Failed record (none: it was killed, 'incomplete') and its checkpoints."""
    status = "incomplete"
    for record in read_metrics(run_dir):
        if record.get("event") == Finished.__name__:
            status = str(record["result"]["status"])
        elif record.get("event") == Failed.__name__:
            status = "failed"
    return continuation_for(status, latest_checkpoint(run_dir))


def summarize_run(result: TrainResult) -> RunSummary:
    """The summary of the run ``result`` ended (reads its folder: call it off the UI thread)."""
    run_dir = Path(result.run_dir)
    records = read_metrics(run_dir)
    evals = [_eval_point(r) for r in records if r.get("event") == EvalMetrics.__name__]
    before = next((e for e in evals if e.step == 0), None)
    after = next((e for e in reversed(evals) if e.step > 0), None)
    seconds = sum(float(r["result"].get("seconds", 0.0)) for r in records if r.get("event") == Finished.__name__)
    if result.status == "failed":  # a failed part writes no Finished record: its time is the result's
        seconds += result.seconds
    adapter = Path(result.adapter_dir) if result.adapter_dir else None
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return RunSummary(
        status=result.status, steps=result.steps, total_steps=result.total_steps, run_dir=run_dir,
        before=before, after=after, best_step=result.best_step, best_loss=result.best_eval_loss, seconds=seconds,
        adapter_dir=adapter, adapter_bytes=folder_bytes(adapter) if adapter is not None else None,
        checkpoint_dir=checkpoint, error=result.error, class_changes=tuple(changes_of(records)),
    )


def changes_of(records: list[dict[str, Any]]) -> list[ClassChange]:
    """Per-class recall from the first evaluation with a confusion matrix to the last one (the base at
    step 0 when the run evaluated there); [] when the run has fewer than two such evaluations or
    their matrices do not match (a resumed run whose classes changed)."""
    evaluated = [r for r in records if r.get("event") == EvalMetrics.__name__ and r.get("confusion")]
    if len(evaluated) < 2 or evaluated[-1]["step"] <= evaluated[0]["step"]:
        return []
    first, last = evaluated[0], evaluated[-1]
    names = last.get("class_names") or [str(i) for i in range(len(last["confusion"]))]
    try:
        return class_changes(first["confusion"], last["confusion"], names)
    except ValueError:
        return []


def earlier_events(run_dir: str | Path) -> tuple[list[StepMetrics | EvalMetrics], int | None]:
    """The step and evaluation events a run logged up to its newest checkpoint, in order, and that
    checkpoint's step (None: no checkpoint in the log): the curves a resumed run continues, and
    where.  Later records, from a part killed after that checkpoint, are trained again by the
    resume and would be drawn twice, so they are left out."""
    records = read_metrics(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    up_to = None
    if checkpoint is not None:
        saved = [r["step"] for r in records if r.get("event") == CheckpointSaved.__name__
                 and r.get("kind") != "best" and Path(r["path"]).name == checkpoint.name]
        up_to = saved[-1] if saved else None
    events: list[StepMetrics | EvalMetrics] = []
    for record in records:
        kind = record.get("event")
        if kind not in (StepMetrics.__name__, EvalMetrics.__name__) or (up_to is not None and record["step"] > up_to):
            continue
        fields = {k: v for k, v in record.items() if k != "event"}
        events.append(StepMetrics(**fields) if kind == StepMetrics.__name__ else EvalMetrics(**fields))
    return events, up_to


def folder_bytes(path: Path) -> int | None:
    """The bytes of the files under ``path`` (a file: its size); None when it does not exist."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _eval_point(record: dict[str, Any]) -> EvalPoint:
    return EvalPoint(int(record["step"]), float(record["loss"]), record.get("accuracy"), record.get("perplexity"))
