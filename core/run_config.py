"""The one typed configuration of a training run, saved and loaded as TOML.

The window edits it, the CLI reads it (``lora-studio train RUN.toml``) and a run
folder keeps a copy (``run.toml``), so a run can be resumed or repeated exactly.
It is a tree of dataclasses, one per TOML table::

    [model]     where the model comes from and how to load it      (ModelConfig)
    [data]      the dataset, its columns and the validation split  (DataConfig)
    [lora]      the adapter                                         (LoraConfig)
    [training]  optimisation, evaluation, checkpoints, guards       (TrainingConfig)
    [output]    the run folder and loggers                          (OutputConfig)

Every field carries a help note (``metadata["help"]``) and every value is checked
in the section's ``validate()`` (run on construction); a bad value raises
``ValueError`` naming the field as ``section.field``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .adapter.config import LoraConfig
from .disk.atomic_files import atomic_write_text

MODEL_SOURCES = ("torchvision", "transformers", "python", "demo")
TASKS = ("image-classification", "sequence-classification", "causal-lm")
DTYPES = ("float32", "float16", "bfloat16")
DATA_KINDS = ("image-folder", "text-classification", "causal-lm", "torchvision", "digits")
DIGIT_SHIFTS = ("none", "rotate", "mirror", "invert")
DATA_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "text", "prompt-response")  # core/data/chat_formats.py
CHAT_TEMPLATE_CHOICES = ("auto", "chatml", "llama-3", "mistral", "gemma")  # core/data/chat_templates.py; or Jinja
LOSS_ON_CHOICES = ("auto", "assistant", "response", "all")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("float32", "bfloat16", "float16")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, a CUDA device by index
NONFINITE_ACTIONS = ("stop", "skip")
OPTIMIZERS = ("adamw", "adamw_8bit")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")  # core/training/distributed.py, core/training/fsdp.py
BAD_IMAGE_ACTIONS = ("skip", "error")
MODES = ("lora", "full", "head")
MODE_TITLES = {"lora": "LoRA", "full": "full fine-tuning", "head": "head-only"}  # "a full fine-tuning run"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _fail(section: str, name: str, problem: str, value: Any) -> ValueError:
    return ValueError(f"{section}.{name} {problem}, got {value!r}")


def _choice(section: str, obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise _fail(section, name, f"must be one of {', '.join(choices)}", value)


def _int(section: str, obj: Any, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(section, name, f"must be an integer >= {minimum}", value)


def _number(section: str, obj: Any, name: str, low: float, high: float = float("inf"), *, open_low=False) -> None:
    value = getattr(obj, name)
    # NaN and infinity are refused everywhere: `lr = inf` trains nothing but NaN (issue 15).
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        side = ">" if open_low else ">="
        raise _fail(section, name, f"must be a finite number {side} {low}"
                    + (f" and <= {high}" if high < float("inf") else ""), value)


def _optional_str(section: str, obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(section, name, "must be a non-empty string when given", value)


def _bool(section: str, obj: Any, name: str) -> None:
    if not isinstance(getattr(obj, name), bool):
        raise _fail(section, name, "must be true or false", getattr(obj, name))


@dataclass
class ModelConfig:
    """Where the model comes from."""

    source: str = field(
        default="demo", metadata=_help("torchvision, transformers, python (your factory) or demo (digits, text).")
    )
    name: str = field(
        default="digits",
        metadata=_help("torchvision model name, hub id or local folder, 'file.py:function', or the demo's name."),
    )
    task: str | None = field(
        default=None,
        metadata=_help("image-classification, sequence-classification or causal-lm; inferred when left out."),
    )
    num_classes: int | None = field(
        default=None, metadata=_help("Classes of the new head; taken from the data's labels when left out.")
    )
    weights: str = field(
        default="default",
        metadata=_help("torchvision: 'default' (pretrained, cache or download), 'random', or a local weights file."),
    )
    checkpoint: str | None = field(
        default=None, metadata=_help("A safetensors file loaded into a python-factory model after building it.")
    )
    head: str | None = field(
        default=None, metadata=_help("Module name of the classifier head to replace; found automatically if left out.")
    )
    trust_remote_code: bool = field(
        default=False, metadata=_help("Run a hub model's own Python code (off: it can do anything on your machine).")
    )
    dtype: str = field(default="float32", metadata=_help("Load the base in float32, float16 or bfloat16."))
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("Recompute activations in backward: less memory, about 30% slower.")
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        _choice("model", self, "source", MODEL_SOURCES)
        if not isinstance(self.name, str) or not self.name:
            raise _fail("model", "name", "must be a non-empty string", self.name)
        if self.task is not None:
            _choice("model", self, "task", TASKS)
        if self.num_classes is not None:
            _int("model", self, "num_classes", 1)
        if not isinstance(self.weights, str) or not self.weights:
            raise _fail("model", "weights", "must be 'default', 'random' or a file path", self.weights)
        _optional_str("model", self, "checkpoint")
        _optional_str("model", self, "head")
        _bool("model", self, "trust_remote_code")
        _choice("model", self, "dtype", DTYPES)
        _bool("model", self, "gradient_checkpointing")
        if self.source == "python" and ":" not in self.name:
            raise _fail("model", "name", "must be 'path/to/file.py:function_name' for source python", self.name)


@dataclass
class DataConfig:
    """The dataset: what kind, where, which columns, and how validation is split off."""

    kind: str = field(
        default="digits",
        metadata=_help("image-folder, text-classification (CSV/JSONL), causal-lm (text, instructions, chats), "
                       "torchvision, digits."),
    )
    train: str | None = field(
        default=None, metadata=_help("Training file or folder (the torchvision dataset's name for kind torchvision).")
    )
    validation: str | None = field(default=None, metadata=_help("A separate validation file or folder (optional)."))
    validation_split: float = field(
        default=0.1, metadata=_help("Fraction held out for validation when no validation file is given; 0 = none.")
    )
    split_seed: int = field(default=0, metadata=_help("Seed of the train/validation split (fixed: runs compare)."))
    text_column: str = field(default="text", metadata=_help("Column holding the text."))
    label_column: str = field(default="label", metadata=_help("Column holding the label (a name or an index)."))
    label_names: list[str] | None = field(
        default=None, metadata=_help("The label set, in head order; collected from the training data when left out.")
    )
    prompt_column: str | None = field(
        default=None, metadata=_help("Causal LM: prompt column; its tokens are masked out of the loss.")
    )
    response_column: str | None = field(default=None, metadata=_help("Causal LM: response column (with a prompt)."))
    max_length: int = field(default=128, metadata=_help("Tokens per example (longer ones are cut)."))
    packing: bool = field(
        default=False, metadata=_help("Causal LM: pack whole examples side by side in rows of max_length tokens "
                                      "(positions restart, attention stays within each example).")
    )
    format: str = field(
        default="auto",
        metadata=_help("Causal LM rows: auto (from the columns), alpaca, sharegpt, messages, text or prompt-response."),
    )
    chat_template: str = field(
        default="auto",
        metadata=_help("Chat data: auto (the tokenizer's own, else chatml), chatml, llama-3, mistral, gemma, or a "
                       "Jinja template."),
    )
    loss_on: str = field(
        default="auto",
        metadata=_help("Causal LM loss on: assistant turns, the response (last answer), or all tokens; auto: "
                       "assistant for chats, response for instructions, all for text."),
    )
    dataset_split: str = field(
        default="train", metadata=_help("Hub datasets and save_to_disk folders: the split to train on.")
    )
    validation_dataset_split: str = field(
        default="validation",
        metadata=_help("Hub datasets and save_to_disk folders: the split data.validation reads."),
    )
    dataset_subset: str | None = field(
        default=None, metadata=_help("Hub datasets: the subset (configuration) name, when the dataset has several.")
    )
    image_size: int | None = field(
        default=None, metadata=_help("Resize images to this square size; the model's own preprocessing if left out.")
    )
    bad_images: str = field(
        default="error", metadata=_help("An unreadable image: 'error' stops with its path, 'skip' drops and counts it.")
    )
    root: str | None = field(
        default=None, metadata=_help("torchvision datasets: folder they are (or get) downloaded to.")
    )
    download: bool = field(default=True, metadata=_help("torchvision datasets: download when absent and online."))
    max_samples: int | None = field(default=None, metadata=_help("Use only the first N training samples (quick runs)."))
    shift: str = field(
        default="rotate",
        metadata=_help("Digits demo: the domain shift the adapter must undo (none, rotate, mirror, invert)."),
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        _choice("data", self, "kind", DATA_KINDS)
        _optional_str("data", self, "train")
        _optional_str("data", self, "validation")
        if self.kind not in ("digits",) and self.train is None:
            raise _fail("data", "train", f"must be given for kind {self.kind}", self.train)
        _number("data", self, "validation_split", 0.0, 0.9)
        _int("data", self, "split_seed", 0)
        for name in ("text_column", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _fail("data", name, "must be a column name", getattr(self, name))
        if self.label_names is not None:
            names = self.label_names
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise _fail("data", "label_names", "must be a non-empty list of names", names)
            if len(set(names)) != len(names):
                raise _fail("data", "label_names", "must not repeat a name", names)
        _optional_str("data", self, "prompt_column")
        _optional_str("data", self, "response_column")
        if (self.prompt_column is None) != (self.response_column is None):
            raise _fail("data", "response_column", "must be given together with prompt_column", self.response_column)
        _int("data", self, "max_length", 2)
        _bool("data", self, "packing")
        _choice("data", self, "format", DATA_FORMATS)
        template = self.chat_template
        if not isinstance(template, str) or not (template in CHAT_TEMPLATE_CHOICES or "{{" in template or "{%" in template):
            raise _fail("data", "chat_template", f"must be one of {', '.join(CHAT_TEMPLATE_CHOICES)} or a Jinja "
                        "template (text with {{ }} or {% %})", self.chat_template)
        _choice("data", self, "loss_on", LOSS_ON_CHOICES)
        if self.format == "text" and self.loss_on not in ("auto", "all"):
            raise _fail("data", "loss_on", "must be 'all' (or 'auto') for plain text, which has no prompt",
                        self.loss_on)
        if self.format == "prompt-response" and self.prompt_column is None:
            raise _fail("data", "prompt_column", "must be given for data.format prompt-response", self.prompt_column)
        for name in ("dataset_split", "validation_dataset_split"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _fail("data", name, "must be a split name", getattr(self, name))
        _optional_str("data", self, "dataset_subset")
        if self.image_size is not None:
            _int("data", self, "image_size", 4)
        _choice("data", self, "bad_images", BAD_IMAGE_ACTIONS)
        _optional_str("data", self, "root")
        _bool("data", self, "download")
        if self.max_samples is not None:
            _int("data", self, "max_samples", 1)
        _choice("data", self, "shift", DIGIT_SHIFTS)


@dataclass
class TrainingConfig:
    """Optimisation, evaluation, checkpoints and guards."""

    mode: str = field(default="lora", metadata=_help(
        "'lora' trains the adapter; 'full' every weight, 'head' only the classifier head and lora.modules_to_save "
        "(the two baselines LoRA is compared against)."))
    max_steps: int = field(default=200, metadata=_help("Optimizer steps to run (one step = batch_size samples)."))
    batch_size: int = field(
        default=32, metadata=_help("Samples per optimizer step, over all processes and accumulation micro-batches.")
    )
    grad_accumulation: int = field(
        default=1, metadata=_help("Micro-batches per step on each process (less memory, same result).")
    )
    lr: float = field(default=1e-3, metadata=_help("Peak learning rate of AdamW."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay (0 is usual for LoRA factors)."))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_help("AdamW betas."))
    warmup_steps: int = field(default=0, metadata=_help("Steps of linear warm-up from 0 to lr."))
    schedule: str = field(default="cosine", metadata=_help("Decay after warm-up: cosine, linear or constant."))
    min_lr_ratio: float = field(default=0.0, metadata=_help("The schedule decays to lr × this at the last step."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this; 0 turns clipping off."))
    precision: str = field(
        default="float32",
        metadata=_help("Mixed precision on CUDA: bfloat16, or float16 with a gradient scaler; adapters stay float32."),
    )
    seed: int = field(default=0, metadata=_help("Seed of initialisation, data order and dropout."))
    device: str = field(default="auto", metadata=_help("auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps."))
    processes: int = field(default=1, metadata=_help(
        "Processes that train together, one per device: 1 trains in this process; N > 1 starts N under torchrun "
        "(GPUs 0..N-1 with device cuda, gloo processes with cpu). Under a torchrun started by hand, its count rules."))
    distributed: str = field(default="ddp", metadata=_help(
        "How several processes share the model: ddp (a whole copy each, gradients averaged) or fsdp (each holds a "
        "shard of every transformer block: models larger than one device)."))
    eval_every: int = field(default=50, metadata=_help("Evaluate every N steps (and at the end); 0 = only at the end."))
    eval_at_start: bool = field(
        default=False, metadata=_help("Also evaluate before the first step: the baseline the run improves on.")
    )
    eval_batch_size: int = field(default=64, metadata=_help("Batch size of evaluation."))
    early_stopping_patience: int = field(
        default=0, metadata=_help("Stop after N evaluations without a better loss; 0 = never stop early.")
    )
    checkpoint_every: int = field(default=50, metadata=_help("Save a resumable checkpoint every N steps; 0 = only at the end."))
    keep_checkpoints: int = field(default=2, metadata=_help("How many step checkpoints to keep (the newest)."))
    nonfinite: str = field(
        default="stop", metadata=_help("A NaN/Inf loss or gradient: 'stop' the run, or 'skip' that step and go on.")
    )
    log_every: int = field(default=1, metadata=_help("Emit step metrics every N steps."))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes (0 = load in the training process)."))
    optimizer: str = field(default="adamw", metadata=_help(
        "adamw, or adamw_8bit (bitsandbytes' 8-bit AdamW: less optimizer memory; CUDA with bitsandbytes only)."))
    neftune_alpha: float = field(default=0.0, metadata=_help(
        "NEFTune: uniform noise of scale alpha/sqrt(length × width) on the input embeddings while training "
        "(5 is usual for instruction tuning); 0 = off."))

    def __post_init__(self) -> None:
        self.validate()

    @property
    def trains_adapter(self) -> bool:
        """True for a LoRA run; the baselines ('full', 'head') save the whole model's weights instead."""
        return self.mode == "lora"

    @property
    def mode_title(self) -> str:
        """The mode as a run is called in messages: 'LoRA', 'full fine-tuning', 'head-only'."""
        return MODE_TITLES[self.mode]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        s = "training"
        _choice(s, self, "mode", MODES)
        _int(s, self, "max_steps", 1)
        _int(s, self, "batch_size", 1)
        _int(s, self, "grad_accumulation", 1)
        _number(s, self, "lr", 0.0, open_low=True)
        _number(s, self, "weight_decay", 0.0)
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise _fail(s, "betas", "must be two numbers in [0, 1)", betas)
        self.betas = [float(b) for b in betas]
        _int(s, self, "warmup_steps", 0)
        _choice(s, self, "schedule", SCHEDULES)
        _number(s, self, "min_lr_ratio", 0.0, 1.0)
        _number(s, self, "max_grad_norm", 0.0)
        _choice(s, self, "precision", PRECISIONS)
        _int(s, self, "seed", 0)
        if not isinstance(self.device, str) or not (
            self.device in DEVICE_CHOICES or self.device.startswith("cuda:")
        ):
            raise _fail(s, "device", "must be auto, cpu, cuda, cuda:N or mps", self.device)
        _int(s, self, "processes", 1)
        if self.processes > 1 and (self.device == "mps" or self.device.startswith("cuda:")):
            raise _fail(s, "processes", f"must be 1 with device {self.device!r} (one device); use device 'cuda' to "
                        "train on GPUs 0..N-1, or 'cpu'", self.processes)
        _choice(s, self, "distributed", DISTRIBUTED_STRATEGIES)
        _int(s, self, "eval_every", 0)
        _bool(s, self, "eval_at_start")
        _int(s, self, "eval_batch_size", 1)
        _int(s, self, "early_stopping_patience", 0)
        _int(s, self, "checkpoint_every", 0)
        _int(s, self, "keep_checkpoints", 1)
        _choice(s, self, "nonfinite", NONFINITE_ACTIONS)
        _int(s, self, "log_every", 1)
        _int(s, self, "num_workers", 0)
        _choice(s, self, "optimizer", OPTIMIZERS)
        _number(s, self, "neftune_alpha", 0.0)
        if self.batch_size % self.grad_accumulation:
            raise _fail(s, "batch_size", f"must be a multiple of grad_accumulation ({self.grad_accumulation})", self.batch_size)


@dataclass
class OutputConfig:
    """Where the run writes."""

    dir: str = field(default="runs/run", metadata=_help("The run folder: checkpoints, metrics, the final adapter."))
    tensorboard: bool = field(default=True, metadata=_help("Also write TensorBoard logs when tensorboard is installed."))
    overwrite: bool = field(
        default=False, metadata=_help("Start afresh in a run folder that already holds a run (else refused).")
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not isinstance(self.dir, str) or not self.dir:
            raise _fail("output", "dir", "must be a folder path", self.dir)
        _bool("output", self, "tensorboard")
        _bool("output", self, "overwrite")


@dataclass
class SamplesConfig:
    """Fixed samples evaluated at every evaluation step, so the user sees what the model does as it
    trains: prompts a causal LM continues, or a handful of validation examples a classifier labels."""

    prompts: list[str] = field(
        default_factory=list, metadata=_help("Causal LM: prompts generated from at every evaluation (empty: none).")
    )
    count: int = field(
        default=8, metadata=_help("Classifiers: validation examples labelled at every evaluation, drawn once "
                                  "with the run's seed (0: none).")
    )
    max_new_tokens: int = field(default=32, metadata=_help("Causal LM: tokens generated per prompt."))
    temperature: float = field(
        default=0.0, metadata=_help("Causal LM: sampling temperature; 0 is greedy, so steps compare like with like.")
    )
    seed: int | None = field(default=None, metadata=_help("The samples' seed (default: training.seed)."))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not isinstance(self.prompts, list) or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise _fail("samples", "prompts", "must be a list of non-empty strings", self.prompts)
        _int("samples", self, "count", 0)
        _int("samples", self, "max_new_tokens", 1)
        _number("samples", self, "temperature", 0.0)
        if self.seed is not None:
            _int("samples", self, "seed", 0)


def _without_none(value: Any) -> Any:
    """``value`` with every None dropped from its dicts and lists, at any depth (TOML has no null)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value


_REQUIRED_SECTIONS = ("model", "data")  # the others have defaults that suit any model and data
_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfig,
    "training": TrainingConfig,
    "output": OutputConfig,
    "samples": SamplesConfig,
}


@dataclass
class RunConfig:
    """One training run: model, data, adapter, training, output, and the samples shown while it trains."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every section, then the rules that span sections."""
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
            getattr(self, name).validate()
        if self.data.kind == "causal-lm" and self.model.task not in (None, "causal-lm"):
            raise ValueError(f"model.task must be causal-lm for data.kind causal-lm, got {self.model.task!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, one dict per section; round-trips through :meth:`from_dict`."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain data; unknown sections and fields are refused by name."""
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"{name} must be a table, got {values!r}")
            if section_cls is LoraConfig:
                sections[name] = LoraConfig.from_dict(values)
                continue
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"unknown field(s) in [{name}]: {', '.join(bad)}; known: {', '.join(sorted(known))}")
            sections[name] = section_cls(**values)
        return cls(**sections)

    def to_toml(self) -> str:
        """The config as TOML text, one ``[section]`` per table; dicts inside a section (a rank
        pattern, variant settings) become sub-tables such as ``[lora.rank_pattern]``.

        Fields left at None are omitted (TOML has no null): reading the text back gives them
        their default, which is None.
        """
        return tomli_w.dumps(_without_none(self.to_dict()))

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        """Parse TOML text; a syntax error is reported with its line."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the config to ``path`` atomically."""
        atomic_write_text(path, self.to_toml())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a ``RUN.toml``; relative data and model paths stay relative to the working folder."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"run config {path} is a folder; pass the RUN.toml inside it "
                                    "(a run folder's config is its run.toml)")
        if not path.is_file():
            raise FileNotFoundError(f"run config {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"run config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"run config {path} is not valid TOML: {exc}") from None
        # Defaults would quietly train the digits demo on a config that forgot what to train.
        missing = [name for name in _REQUIRED_SECTIONS if name not in data]
        if missing:
            tables = " and ".join(f"[{name}]" for name in missing) + (" tables" if len(missing) > 1 else " table")
            raise ValueError(f"run config {path} has no {tables}: say which model to train on which data (the "
                             "run.toml in any run folder, e.g. one `lora-studio demo digits --output DIR` made, is a "
                             "complete example to edit)")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"run config {path}: {exc}") from None

    def replace(self, **sections: Any) -> RunConfig:
        """A validated copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)
