"""A run folder read back for the history panel, and the configs of a rank study.

Qt-free on purpose: the engine already writes everything a history needs into each
run folder (``run.toml``, ``metrics.jsonl`` with a ``Finished`` record holding the
result), so the history is only a list of folders read back, never a second store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core import EvalMetrics, Failed, Finished, RunConfig, StepMetrics, load_run_config, read_metrics


@dataclass(frozen=True)
class RunRecord:
    """One run as its folder tells it: config, curves and (once ended) its result."""

    run_dir: Path
    config: RunConfig
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float | None] = field(default_factory=list)
    eval_perplexity: list[float | None] = field(default_factory=list)
    result: dict[str, Any] | None = None  # the Finished event's TrainResult, as a dict
    failure: str | None = None  # the Failed event's message

    @property
    def name(self) -> str:
        """The folder's name (study runs: ``study/r8``)."""
        parent = self.run_dir.parent.name
        return f"{parent}/{self.run_dir.name}" if "-study" in parent else self.run_dir.name

    @property
    def status(self) -> str:
        """'finished', 'cancelled', 'stopped-early', 'failed', or 'incomplete' (running or killed)."""
        if self.failure is not None:
            return "failed"
        return str(self.result["status"]) if self.result else "incomplete"

    @property
    def trainable(self) -> int | None:
        """Trainable parameters of the run (known once it ended)."""
        return int(self.result["trainable_parameters"]) if self.result else None

    @property
    def setup(self) -> str:
        """What the run trained: ``LoRA r=8`` or ``full``."""
        if self.config.training.mode == "full":
            return "full"
        return f"{self.config.lora.variant if self.config.lora.variant != 'lora' else 'LoRA'} r={self.config.lora.r}"

    @property
    def legend(self) -> str:
        """The comparison plot's legend: setup and trainable-parameter count (the rank study's axis)."""
        count = f"{self.trainable:,} trainable" if self.trainable is not None else "trainable: ?"
        return f"{self.name} · {self.setup} · {count}"


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a run folder; raises FileNotFoundError when ``run_dir`` holds no ``run.toml``."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    curves: dict[str, list] = {k: [] for k in ("ts", "tl", "es", "el", "ea", "ep")}
    result, failure = None, None
    for record in read_metrics(run_dir):
        kind = record.get("event")  # the event's class name: core's log writes type(event).__name__
        if kind == StepMetrics.__name__:
            curves["ts"].append(record["step"])
            curves["tl"].append(record["loss"])
        elif kind == EvalMetrics.__name__:
            curves["es"].append(record["step"])
            curves["el"].append(record["loss"])
            curves["ea"].append(record.get("accuracy"))
            curves["ep"].append(record.get("perplexity"))
        elif kind == Finished.__name__:
            result, failure = record["result"], None  # a resumed run can fail, then finish
        elif kind == Failed.__name__:
            failure = record["message"]
    return RunRecord(run_dir, config, curves["ts"], curves["tl"], curves["es"], curves["el"], curves["ea"],
                     curves["ep"], result, failure)


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` holds a run (its ``run.toml``)."""
    try:
        load_run_config(path)
    except (OSError, ValueError):
        return False
    return True


def next_free_run_dir(path: str | Path) -> Path:
    """``path`` if it holds no run yet, else the first free ``path-2``, ``path-3``...: the window
    never overwrites a run the history keeps."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def study_configs(base: RunConfig, ranks: list[int], *, full_lr: float | None = None,
                  study_dir: str | Path | None = None) -> list[RunConfig]:
    """The runs of a rank study: ``base`` at each rank (folders ``r4``, ``r8``...), plus a full
    fine-tuning run (folder ``full``) at learning rate ``full_lr`` when given.

    Alpha stays as it is, as in LoRA's paper (Hu et al. 2021, section 4: α is set once and not
    retuned when r changes), and per-layer rank patterns are dropped: the study varies one rank.
    """
    if not ranks and full_lr is None:
        raise ValueError("a study needs at least one rank or a full fine-tuning run")
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    out = Path(base.output.dir)
    folder = Path(study_dir) if study_dir else next_free_run_dir(out.with_name(f"{out.name}-study"))
    runs = []
    for r in ranks:
        lora = base.lora.replace(r=r, rank_pattern={})
        training = dataclasses.replace(base.training, mode="lora")
        runs.append(base.replace(lora=lora, training=training, output=_output(base, folder / f"r{r}")))
    if full_lr is not None:
        training = dataclasses.replace(base.training, mode="full", lr=full_lr)
        runs.append(base.replace(training=training, output=_output(base, folder / "full")))
    return runs


def _output(base: RunConfig, folder: Path) -> Any:
    return dataclasses.replace(base.output, dir=str(folder))
