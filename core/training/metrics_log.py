"""Every event of a run appended to ``metrics.jsonl`` (and TensorBoard when it is installed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .events import EvalMetrics, Event, Finished, Samples, StepMetrics


def event_record(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of an event, with its type under ``event``."""
    return {"event": type(event).__name__, **dataclasses.asdict(event)}


class MetricsLog:
    """Appends events to ``run_dir/metrics.jsonl``; mirrors the numbers to TensorBoard if asked and available."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            except ImportError:
                pass
            else:
                self._board = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, event: Event) -> None:
        """Record one event (flushed at once, so a killed run keeps its log)."""
        self._file.write(json.dumps(event_record(event)) + "\n")
        self._file.flush()
        if self._board is None:
            return
        if isinstance(event, StepMetrics):
            for key in ("loss", "learning_rate", "grad_norm", "samples_per_second"):
                self._board.add_scalar(f"train/{key}", getattr(event, key), event.step)
        elif isinstance(event, EvalMetrics):
            for key in ("loss", "accuracy", "perplexity"):
                if getattr(event, key) is not None:
                    self._board.add_scalar(f"eval/{key}", getattr(event, key), event.step)
        elif isinstance(event, Samples):
            self._board.add_text("samples", samples_markdown(event), event.step)
        elif isinstance(event, Finished):
            self._board.flush()

    def close(self) -> None:
        """Close the files."""
        self._file.close()
        if self._board is not None:
            self._board.close()


def samples_markdown(samples: Samples) -> str:
    """One evaluation's samples as a Markdown table (TensorBoard's text tab renders it)."""
    rows = ["| input | output | target |", "| --- | --- | --- |"]
    for item in samples.items:
        mark = "" if item.correct is None else (" ✓" if item.correct else " ✗")
        cells = [item.input, item.output + mark, item.target or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
