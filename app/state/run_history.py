"""A run folder read back for the history panel, two runs' samples side by side, and the configs
of a rank study.

Qt-free on purpose: the engine already writes everything a history needs into each
run folder (``run.toml``, ``metrics.jsonl`` with a ``Finished`` record holding the
result, the ``Samples`` of each evaluation and its confusion matrix), so the history is
only a list of folders read back, never a second store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_studio.core import (
    EvalMetrics,
    Failed,
    Finished,
    RunConfig,
    SampleResult,
    Samples,
    StepMetrics,
    load_run_config,
    read_metrics,
)


@dataclass(frozen=True)
class ConfusionAt:
    """One evaluation's confusion matrix: ``matrix[true][predicted]`` counts, in ``class_names`` order."""

    step: int
    matrix: list[list[int]]
    class_names: list[str]


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
    last_step: int = 0  # the highest step any record of the log names (metrics come every log_every steps)
    samples: list[Samples] = field(default_factory=list)  # the fixed samples of each evaluation, in step order
    confusions: list[ConfusionAt] = field(default_factory=list)  # classifiers: each evaluation's matrix

    @property
    def last_samples(self) -> Samples | None:
        """The samples of the run's last evaluation (None: it logged none)."""
        return self.samples[-1] if self.samples else None

    @property
    def last_confusion(self) -> ConfusionAt | None:
        """The confusion matrix of the run's last evaluation (None: not a classifier, or never evaluated)."""
        return self.confusions[-1] if self.confusions else None

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
    def steps(self) -> int:
        """Steps the run trained: its result's count once it ended (a run cancelled at step 16 with
        metrics every 10 steps trained 16, not 10), else the last step its log names."""
        if self.result and self.result.get("steps") is not None:
            return int(self.result["steps"])
        return self.last_step

    @property
    def final_metric(self) -> tuple[str, float] | None:
        """(name, value) of the run's last evaluation, the number a study compares: accuracy (%),
        else perplexity, else validation loss; None before any evaluation."""
        candidates = (("accuracy (%)", self.eval_accuracy, 100.0), ("perplexity", self.eval_perplexity, 1.0),
                      ("validation loss", self.eval_loss, 1.0))
        for name, values, scale in candidates:
            if values and values[-1] is not None:
                return name, scale * float(values[-1])
        return None

    @property
    def trainable(self) -> int | None:
        """Trainable parameters of the run (known once it ended)."""
        return int(self.result["trainable_parameters"]) if self.result else None

    @property
    def setup(self) -> str:
        """What the run trained: ``LoRA r=8``, ``full`` or ``head only``."""
        if self.config.training.mode == "full":
            return "full"
        if self.config.training.mode == "head":
            return "head only"
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
    result, failure, last_step = None, None, 0
    samples: list[Samples] = []
    confusions: list[ConfusionAt] = []
    for record in read_metrics(run_dir):
        try:
            result, failure, last_step = _read_record(record, curves, samples, confusions, result, failure,
                                                      last_step)
        except (KeyError, TypeError, ValueError):  # a damaged record: the curves go on without it
            continue
    return RunRecord(run_dir, config, curves["ts"], curves["tl"], curves["es"], curves["el"], curves["ea"],
                     curves["ep"], result, failure, last_step, samples, confusions)


def _read_record(record: dict[str, Any], curves: dict[str, list], samples: list[Samples],
                 confusions: list[ConfusionAt], result: dict | None, failure: str | None,
                 last_step: int) -> tuple[dict | None, str | None, int]:
    """Fold one log record into the run's curves, samples and confusions; return (result, failure, step)."""
    kind = record.get("event")  # the event's class name: core's log writes type(event).__name__
    step = record.get("step")
    if isinstance(step, int):
        last_step = max(last_step, step)
    if kind == StepMetrics.__name__:
        _append_point(curves, ("ts", "tl"), step, record["loss"])
    elif kind == EvalMetrics.__name__:
        _append_point(curves, ("es", "el", "ea", "ep"), step, record["loss"], record.get("accuracy"),
                      record.get("perplexity"))
        if record.get("confusion"):
            names = record.get("class_names") or [str(i) for i in range(len(record["confusion"]))]
            _append_at(confusions, ConfusionAt(step, record["confusion"], list(names)))
    elif kind == Samples.__name__:
        _append_at(samples, samples_of(record))
    elif kind == Finished.__name__:
        result, failure = record["result"], None  # a resumed run can fail, then finish
    elif kind == Failed.__name__:
        failure = record["message"]
    return result, failure, last_step


def samples_of(record: dict[str, Any]) -> Samples:
    """A ``Samples`` event back from its ``metrics.jsonl`` record."""
    fields = {f.name for f in dataclasses.fields(SampleResult)}
    items = [SampleResult(**{k: v for k, v in item.items() if k in fields}) for item in record.get("items", [])]
    return Samples(int(record["step"]), items)


def earlier_samples(run_dir: str | Path, up_to: int | None) -> list[Samples]:
    """The samples a run logged up to step ``up_to`` (None: all), oldest first: what a resumed run's
    samples pane shows before its next evaluation.  Later ones, from a part killed after its last
    checkpoint, are evaluated again by the resume and left out."""
    samples: list[Samples] = []
    for record in read_metrics(run_dir):
        if record.get("event") == Samples.__name__ and (up_to is None or record["step"] <= up_to):
            _append_at(samples, samples_of(record))
    return samples


def with_samples(record: RunRecord, samples: Samples) -> RunRecord:
    """``record`` with one more evaluation's samples (a running run's newest, without reading its log
    again); samples of a step it holds already replace those."""
    entries = list(record.samples)
    _append_at(entries, samples)
    return dataclasses.replace(record, samples=entries)


def _append_at(entries: list, entry: Any) -> None:
    """Add a per-evaluation entry (it has a ``step``); a resumed run's repeated steps replace the old ones,
    as :func:`_append_point` does for the curves."""
    while entries and entries[-1].step >= entry.step:
        entries.pop()
    entries.append(entry)


def _append_point(curves: dict[str, list], keys: tuple[str, ...], step: int, *values: Any) -> None:
    """Add one point to the curves ``keys`` (steps first).  A resumed run logs again from its
    checkpoint's step: the points it repeats replace the old ones, so each curve runs forward once."""
    if not isinstance(step, int) or not all(v is None or isinstance(v, (int, float)) for v in values):
        raise ValueError(f"a damaged record: step {step!r}, values {values!r}")  # read_run skips it
    steps = curves[keys[0]]
    if steps and step <= steps[-1]:
        keep = next((i for i, s in enumerate(steps) if s >= step), len(steps))
        for key in keys:
            del curves[key][keep:]
    for key, value in zip(keys, (step, *values), strict=True):
        curves[key].append(value)


@dataclass(frozen=True)
class ComparedSample:
    """One prompt or validation example across compared runs: each run's result for it, in the runs'
    order (None: that run has no sample with this input)."""

    input: str
    target: str | None  # classifiers: the true label
    results: tuple[SampleResult | None, ...]

    @property
    def differs(self) -> bool:
        """True when the runs' outputs are not all the same (a missing one counts as different)."""
        return len({r.output if r is not None else None for r in self.results}) > 1


def compare_samples(runs: list[Samples | None]) -> list[ComparedSample]:
    """Line up the samples of several runs by their input: the first run's order, then inputs only
    later runs have.  An input given twice (the same prompt twice) pairs occurrence by occurrence, so
    nothing is matched to the wrong row.  A run without samples (None) has None in every row."""
    keyed: list[dict[tuple[str, int], SampleResult]] = []
    order: dict[tuple[str, int], None] = {}  # an ordered set
    for samples in runs:
        seen: dict[str, int] = {}
        by_key: dict[tuple[str, int], SampleResult] = {}
        for item in samples.items if samples is not None else []:
            key = (item.input, seen.get(item.input, 0))
            seen[item.input] = key[1] + 1
            by_key[key] = item
            order.setdefault(key)
        keyed.append(by_key)
    rows = []
    for key in order:
        results = tuple(by_key.get(key) for by_key in keyed)
        target = next((r.target for r in results if r is not None and r.target is not None), None)
        rows.append(ComparedSample(key[0], target, results))
    return rows


@dataclass(frozen=True)
class StudyPoint:
    """One run of a rank study on the summary chart: its rank (None: a baseline, full fine-tuning
    or head only), its trainable-parameter count, the final metric it reached, and what it trained
    (:attr:`RunRecord.setup`)."""

    name: str
    rank: int | None
    trainable: int | None
    metric: str
    value: float
    setup: str = ""


def study_points(records: list[RunRecord]) -> list[StudyPoint]:
    """The rank-study summary of ``records``: one point per run that has evaluated, LoRA runs sorted
    by rank and full fine-tuning last.  Runs whose final metric is of another kind than the first
    run's (accuracy beside perplexity) are left out: one chart has one y axis."""
    points = []
    for record in records:
        final = record.final_metric
        if final is None or (points and final[0] != points[0].metric):
            continue
        rank = None if not record.config.training.trains_adapter else record.config.lora.r
        points.append(StudyPoint(record.name, rank, record.trainable, final[0], final[1], record.setup))
    return sorted(points, key=lambda p: (p.rank is None, p.rank or 0))


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


def study_configs(base: RunConfig, ranks: list[int], *, full_lr: float | None = None, head: bool = False,
                  study_dir: str | Path | None = None) -> list[RunConfig]:
    """The runs of a rank study: ``base`` at each rank (folders ``r4``, ``r8``...), plus a full
    fine-tuning run (folder ``full``) at learning rate ``full_lr`` when given, and with ``head`` a
    head-only run (folder ``head``: only the classifier head trains, at ``base``'s learning rate).

    Alpha stays as it is, as in LoRA's paper (Hu et al. 2021, section 4: α is set once and not
    retuned when r changes), and per-layer rank patterns are dropped: the study varies one rank.
    """
    if not ranks and full_lr is None and not head:
        raise ValueError("a study needs at least one rank, a full fine-tuning run or a head-only run")
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
    if head:
        training = dataclasses.replace(base.training, mode="head")
        runs.append(base.replace(training=training, output=_output(base, folder / "head")))
    return runs


def _output(base: RunConfig, folder: Path) -> Any:
    return dataclasses.replace(base.output, dir=str(folder))
