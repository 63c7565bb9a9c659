"""The trained model of a run folder, rebuilt from its config and its saved weights, and the one
way to open any trained thing to try it.

:func:`load_trained_run` is what the CLI exports and what the window hands to its export dialog:
the model built exactly as the run built it, with the final checkpoint's weights (or the best
adapter).  :func:`load_for_inference` opens whatever a user points ``predict``, ``generate`` or
the Try tab at: a run folder, an adapter folder (ours or written by PEFT), or a merged export
(a transformers folder, or a plain ``.safetensors`` file with its sidecar).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..data import read_label_names
from ..disk.adapter_folder import ADAPTER_CONFIG_NAME, apply_saved_chat_template, load_adapter, read_adapter_folder
from ..disk.merged_export import sidecar_path_for
from ..disk.safe_loading import load_safetensors, read_json_object
from ..layers.behaviour import all_finite
from ..models import LoadedModel, load_model, load_transformers
from ..models.transformers_models import load_config
from ..run_config import MODEL_SOURCES, ModelConfig
from .checkpoint import latest_checkpoint
from .setup import build_model
from .trainer import BEST_DIR, RUN_CONFIG_FILE, load_run_config

WHICH = ("final", "best")
BASE_MODEL_FIX = ("give the base model as a spec: --base-model demo:NAME, transformers:ID_OR_FOLDER, "
                  "torchvision:NAME or python:FILE.py:FUNCTION on the command line (base_model= from Python)")
# PEFT's task types and transformers' class-name endings -> the studio's tasks
_PEFT_TASKS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "sequence-classification"}
_CLASS_TASKS = (("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                ("ForSequenceClassification", "sequence-classification"),
                ("ForImageClassification", "image-classification"))
BASE_SEED = 0  # the runs' default seed (training.seed): a new head starts as such a run's did
WHOLE_MODEL_FILE = "model.safetensors"  # what a full fine-tuning run saves in adapter/ and best/
_DIGITS_CLASS = "DigitsNet"  # a plain merged export of the digits demo names this class in its sidecar


def load_trained_run(run_dir: str | Path, which: str = "final") -> LoadedModel:
    """The model trained in ``run_dir``: ``'final'`` (the newest checkpoint: the weights at the
    last step, adapter attached, or the whole model in full fine-tuning) or ``'best'`` (the
    weights of the lowest validation loss: ``best/``, the adapter of a LoRA run or the whole
    model of a full fine-tuning run).  Raises FileNotFoundError when the folder holds no such
    weights, ValueError for an unknown ``which`` or weights that do not fit the run's model
    (naming the file and the tensor).  ``label_names`` are the run's data's labels (None for a
    language model)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    full = not config.training.trains_adapter  # full or head-only: the whole model's weights are saved
    if which == "best":
        best = run_dir / BEST_DIR
        if full:
            if not (best / WHOLE_MODEL_FILE).is_file():
                raise FileNotFoundError(f"{run_dir} holds no best model ({BEST_DIR}/{WHOLE_MODEL_FILE}: the run "
                                        "never evaluated, or had no validation data); use the final weights")
            loaded, labels, _ = build_model(config)
            load_checked_weights(loaded.model, best / WHOLE_MODEL_FILE, complete=True)
            return _named(loaded, labels, run_dir)
        if not best.is_dir():
            raise FileNotFoundError(f"{run_dir} holds no best adapter ({BEST_DIR}/); use the final weights")
        loaded, labels, _ = build_model(config, attach_adapter=False)
        load_adapter(loaded.model, best)
        return _named(loaded, labels, run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint to load the trained model from")
    loaded, labels, _ = build_model(config)
    # A checkpoint holds the trainable tensors (all of them in full fine-tuning) and the buffers.
    load_checked_weights(loaded.model, checkpoint / "model.safetensors", complete=False)
    return _named(loaded, labels, run_dir)


RUN_WEIGHTS_FIX = "the run folder is damaged or from another model; train it again (or use the other --which)"


def load_checked_weights(model: torch.nn.Module, path: Path, *, complete: bool, tensors: dict | None = None,
                         fix: str = RUN_WEIGHTS_FIX) -> None:
    """Load saved weights (a run's checkpoint or whole model, a merged export) into ``model`` after
    checking every tensor against the one it replaces: a name the model has, the same shape, a
    float for a float (no integer bit patterns copied into weights) and finite values.  ``complete``:
    every tensor of the model must be there.  ``tensors``: the file's, when already read.  Raises
    ValueError naming the file, the tensor and ``fix``."""
    tensors = load_safetensors(path) if tensors is None else tensors
    expected = model.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ValueError(f"{path} holds {len(unknown)} tensor(s) the run's model does not have, e.g. "
                         f"{unknown[0]!r}; {fix}")
    missing = sorted(set(expected) - set(tensors)) if complete else []
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of the model's tensors, e.g. {missing[0]!r}; {fix}")
    for key, value in tensors.items():
        target = expected[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{path}: tensor {key!r} has shape {list(value.shape)}, the model's "
                             f"{list(target.shape)}; {fix}")
        if target.is_floating_point() and not value.is_floating_point():
            raise ValueError(f"{path}: tensor {key!r} is {value.dtype}, the model's weight {target.dtype}; {fix}")
        if value.is_floating_point() and not all_finite(value):
            raise ValueError(f"{path}: tensor {key!r} holds NaN or Inf; {fix}")
    model.load_state_dict(tensors, strict=False)


def holds_whole_model(folder: str | Path) -> bool:
    """Whether a run's ``adapter/`` or ``best/`` folder holds a whole fine-tuned model (full fine-tuning:
    ``model.safetensors``, no ``adapter_config.json``) rather than an adapter."""
    folder = Path(folder)
    return (folder / WHOLE_MODEL_FILE).is_file() and not (folder / ADAPTER_CONFIG_NAME).is_file()


def _named(loaded: LoadedModel, labels: list[str] | None, run_dir: Path) -> LoadedModel:
    """A run's loaded model with its classes' names and the chat template its data was rendered with."""
    if labels and loaded.task != "causal-lm":
        loaded.label_names = list(labels)
    apply_saved_chat_template(loaded.tokenizer, run_dir)
    return loaded


def load_for_inference(path: str | Path, *, which: str = "final", base_model: str | None = None) -> LoadedModel:
    """The trained model at ``path``, ready to predict or generate with (eval mode is the caller's).

    * a run folder (``run.toml``): :func:`load_trained_run` (``which``: final or best), labels
      from the run's data;
    * an adapter folder (``adapter_config.json``, ours or PEFT's): its base model, from the
      config's ``base_model_name_or_path`` (``demo:NAME``, ``torchvision:NAME``, a transformers id
      or folder, ...) or ``base_model`` when given, with the adapter loaded on it;
    * a merged export: a transformers folder (``config.json``), or a plain ``.safetensors`` file
      (or the folder holding ``model.safetensors``) with its sidecar, whose architecture is the
      digits demo's or ``base_model``'s.

    Raises FileNotFoundError for a path that holds none of these, ValueError naming the field and
    the fix when the base model is not said or cannot be built.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a run folder, an adapter folder or a merged export")
    if path.is_dir() and (path / RUN_CONFIG_FILE).is_file():
        return load_trained_run(path, which)
    if path.is_dir() and (path / ADAPTER_CONFIG_NAME).is_file():
        return _adapter_on_base(path, base_model)
    if path.is_dir() and (path / "config.json").is_file():
        return _transformers_folder(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix == ".safetensors" and weights.is_file():
        return _plain_export(weights, base_model)
    raise FileNotFoundError(
        f"{path} is not a run folder ({RUN_CONFIG_FILE}), an adapter folder ({ADAPTER_CONFIG_NAME}) or a merged "
        "export (config.json, or a .safetensors file with its .export.json)")


# -- adapter folders ---------------------------------------------------------------------------
def _adapter_on_base(folder: Path, base_model: str | None) -> LoadedModel:
    peft_config, studio, tensors = read_adapter_folder(folder)
    spec = base_model or peft_config.get("base_model_name_or_path")
    field = "--base-model" if base_model else f"{folder / ADAPTER_CONFIG_NAME}: base_model_name_or_path"
    if not spec:
        raise ValueError(f"{folder / ADAPTER_CONFIG_NAME} does not say its base model (base_model_name_or_path "
                         f"is empty); {BASE_MODEL_FIX}")
    config = _base_spec(str(spec), task=_PEFT_TASKS.get(str(peft_config.get("task_type") or "")), field=field)
    loaded = _load_base(config, field)
    width = _saved_head_width(loaded, tensors)
    if width is not None and width != loaded.num_classes:  # the adapter's trained head has its own size
        loaded = _load_base(config, field, num_classes=width)
    load_adapter(loaded.model, folder)
    apply_saved_chat_template(loaded.tokenizer, folder, folder.parent)  # prompts render as in training
    labels = adapter_label_names(folder, studio)
    if labels and loaded.task != "causal-lm" and (loaded.num_classes is None or len(labels) == loaded.num_classes):
        loaded.label_names = labels
    return loaded


def adapter_label_names(folder: str | Path, studio: dict | None = None) -> list[str] | None:
    """The class names of the head an adapter folder trained: the ``label_names`` its studio metadata's
    run summary records (``lora-studio export --adapter`` writes them), else the data's labels of the
    run folder it sits in (a run's ``adapter/`` or ``best/``); None when neither says."""
    folder = Path(folder)
    names = ((studio or {}).get("run_summary") or {}).get("label_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if (folder.parent / RUN_CONFIG_FILE).is_file():
        try:
            return read_label_names(load_run_config(folder.parent).data)
        except (OSError, ValueError):  # the run's data moved: the head's outputs stay unnamed
            return None
    return None


def _base_spec(spec: str, *, task: str | None, field: str) -> ModelConfig:
    """``source:name`` as a model config with the source's pretrained weights; a bare local folder
    or hub id is a transformers model."""
    source, sep, name = spec.partition(":")
    if sep and source in MODEL_SOURCES and name:
        if source == "transformers":
            task = task or _task_of_transformers(name, field)
        return ModelConfig(source=source, name=name, task=task if source == "transformers" else None)
    if Path(spec).expanduser().is_dir() or "/" in spec and not Path(spec).suffix:
        return ModelConfig(source="transformers", name=spec, task=task or _task_of_transformers(spec, field))
    raise ValueError(f"{field} is {spec!r}, which names no model the studio can build; {BASE_MODEL_FIX}")


def _task_of_transformers(name: str, field: str) -> str:
    try:
        config = load_config(name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"the base model {name!r} ({field}) cannot be found: {exc}; {BASE_MODEL_FIX}") from None
    for architecture in getattr(config, "architectures", None) or []:
        for ending, task in _CLASS_TASKS:
            if architecture.endswith(ending):
                return task
    raise ValueError(f"the base model {name!r} ({field}) does not say its task (no architectures in its "
                     "config); give the base with a task, e.g. in a run.toml, or train a run on it")


def _load_base(config: ModelConfig, field: str, num_classes: int | None = None) -> LoadedModel:
    """The base model ``config`` names.  A head it creates (a classifier's, sized for the data) is
    random: seeded like a run with the default seed, so the base column is the same every time (and,
    for such a run, the same as its run folder's), without touching the caller's random state."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BASE_SEED)
            return load_model(config, num_classes=num_classes)
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"the base model {config.source}:{config.name} ({field}) cannot be loaded: {exc}; "
                         f"{BASE_MODEL_FIX}") from None


def _saved_head_width(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> int | None:
    """The out-width of the classifier head saved in the adapter (modules_to_save), if it has one."""
    if not loaded.head:
        return None
    own = re.compile(re.escape(loaded.head) + r"\.(modules_to_save\.[\w-]+\.)?weight")  # not its lora_A/B
    for key, tensor in tensors.items():
        if own.fullmatch(key) and tensor.dim() >= 2:
            return int(tensor.shape[0])
    return None


# -- merged exports ----------------------------------------------------------------------------
def _transformers_folder(folder: Path) -> LoadedModel:
    task = _task_of_transformers(str(folder), str(folder / "config.json"))
    return load_transformers(str(folder), task=task)


def _read_sidecar(path: Path) -> dict:
    """A merged export's sidecar (``.export.json``), or a ValueError naming it when it is damaged."""
    return read_json_object(path, "export the model again, or delete the sidecar and give its base with --base-model")


def _plain_export(weights: Path, base_model: str | None) -> LoadedModel:
    sidecar_path = sidecar_path_for(weights)
    sidecar = _read_sidecar(sidecar_path) if sidecar_path.is_file() else {}
    described = sidecar.get("architecture")
    architecture = str(described.get("class") or "") if isinstance(described, dict) else ""
    if base_model:
        config, field = _base_spec(base_model, task=None, field="--base-model"), "--base-model"
    elif architecture.rsplit(".", 1)[-1] == _DIGITS_CLASS:
        config, field = ModelConfig(source="demo", name="digits"), str(sidecar_path)
    else:
        what = f"its sidecar names the class {architecture}" if architecture else "it has no sidecar naming its class"
        raise ValueError(f"{weights} is a plain merged export ({what}); the studio needs its architecture: "
                         f"{BASE_MODEL_FIX}")
    state = load_safetensors(weights)
    loaded = _load_base(config, field)
    width = _saved_head_width(loaded, state)
    if width is not None and width != loaded.num_classes:
        loaded = _load_base(config, field, num_classes=width)
    load_checked_weights(loaded.model, weights, complete=True, tensors=state,
                         fix=f"it does not fit {config.source}:{config.name} ({field}); {BASE_MODEL_FIX}")
    return loaded
