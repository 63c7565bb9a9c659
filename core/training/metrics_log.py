"""Every event of a run appended to ``metrics.jsonl`` (and TensorBoard when it is installed)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .events import (
    CheckpointSaved,
    EvalMetrics,
    Event,
    Failed,
    Finished,
    SampleResult,
    Samples,
    StepMetrics,
    TrainingWarning,
    TrainResult,
)

# The events a log holds, by the name ``event_record`` writes: a record of one is kept only with
# every field its class requires, so readers may index them without guarding each key.
_REQUIRED = {  # event name -> the fields its class has no default for (read once, not per record)
    cls.__name__: tuple(f.name for f in dataclasses.fields(cls)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    for cls in (StepMetrics, EvalMetrics, Samples, CheckpointSaved, TrainingWarning, Finished, Failed)
}


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
    """The records of a run's ``metrics.jsonl``: one dict per intact line.

    A torn last line from a kill, or a line damaged any other way (not UTF-8, not JSON, not an
    object), is skipped: a log is read to draw curves, and one bad line must not hide the rest.
    """
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_bytes().splitlines() if path.is_file() else []
    return [record for record in map(record_from_line, lines) if record is not None]


def record_from_line(line: bytes) -> dict[str, Any] | None:
    """One line of ``metrics.jsonl`` as its record, or None for a torn or damaged line (see ``read_metrics``)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and _intact(record) else None


def event_from_record(record: dict[str, Any]) -> Event | None:
    """The event a record of ``event_record`` came from, or None for an event of another version
    (fields this version does not know are dropped: a newer log still draws)."""
    cls = _CLASSES.get(record.get("event"))  # type: ignore[arg-type]
    if cls is None:
        return None
    fields = _known_fields(cls, record)
    if cls is Samples:
        fields["items"] = [SampleResult(**_known_fields(SampleResult, item)) for item in fields["items"]
                           if isinstance(item, dict)]
    elif cls is Finished:
        fields["result"] = TrainResult(**_known_fields(TrainResult, fields["result"]))
    try:
        return cls(**fields)
    except TypeError:  # a record of ours missing a field a newer class requires
        return None


_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (StepMetrics, EvalMetrics, Samples, CheckpointSaved,
                                                          TrainingWarning, Finished, Failed)}


def _known_fields(cls: type, record: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in record.items() if k in names}


class MetricsTail:
    """Follows a run's ``metrics.jsonl`` while another process writes it: each :meth:`read` gives the
    records appended since the last one, whole lines only.

    Records already in the file when the tail starts are skipped (a resumed run's earlier part). A
    fresh run deletes and recreates the file: the old file is held open here, so the new one cannot
    reuse its inode, and a changed inode means "read the new file from its start".
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._pending = b""
        if self.path.is_file():
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            self._file.seek(0, os.SEEK_END)

    def read(self) -> list[dict[str, Any]]:
        """The intact records written since the last call (a line still being written waits)."""
        try:
            inode = self.path.stat().st_ino
        except OSError:
            return []
        if self._file is None or os.fstat(self._file.fileno()).st_ino != inode:
            self.close()
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            except OSError:
                return []
        data = self._pending + self._file.read()
        *lines, self._pending = data.split(b"\n")
        return [record for record in map(record_from_line, lines) if record is not None]

    def close(self) -> None:
        """Let go of the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending = b""


def _intact(record: dict[str, Any]) -> bool:
    event = record.get("event")
    required = _REQUIRED.get(event) if isinstance(event, str) else None
    if required is None:
        return isinstance(event, str)  # an event of a newer version: kept, readers skip it
    if any(name not in record for name in required):
        return False
    if "step" in record and not isinstance(record["step"], int):
        return False
    return event != Finished.__name__ or isinstance(record["result"], dict)
