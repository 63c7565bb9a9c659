"""Loading the model a run config names, from whichever source it comes: the one dispatch point."""


from __future__ import annotations

import re
from pathlib import Path

from ..run_config import MODEL_SOURCES, ModelConfig
from .demo_models import DEMO_NAMES, load_demo_model
from .loaded_model import LoadedModel
from .python_factory import load_python_model
from .torchvision_models import load_torchvision, torchvision_names
from .transformers_models import load_config, load_transformers


def infer_task(config: ModelConfig, data_kind: str | None = None) -> str:
    """The model's task: as configured, else what the source or the data implies."""
    if config.task:
        return config.task
    if config.source in ("torchvision", "python") or (config.source == "demo" and config.name == "digits"):
        return "image-classification"
    if config.source == "demo" and config.name == "story":
        return "causal-lm"
    if config.source == "demo":
        return "sequence-classification"
    by_data = {"text-classification": "sequence-classification", "causal-lm": "causal-lm",
               "image-folder": "image-classification", "torchvision": "image-classification"}
    if data_kind in by_data:
        return by_data[data_kind]
    raise ValueError("model.task must be given for a transformers model (image-classification, "
                     "sequence-classification or causal-lm)")


def load_model(
    config: ModelConfig,
    *,
    num_classes: int | None = None,
    label_names: list[str] | None = None,
    data_kind: str | None = None,
    meta: bool = False,
) -> LoadedModel:
    """Build the model ``config`` describes; ``num_classes`` (from the data) sizes a new head."""
    classes = config.num_classes or num_classes
    if config.num_classes and num_classes and num_classes > config.num_classes:
        raise ValueError(f"the data has {num_classes} classes, more than model.num_classes = {config.num_classes}")
    if config.source == "torchvision":
        return load_torchvision(config.name, weights=config.weights, num_classes=classes, head=config.head, meta=meta)
    if config.source == "transformers":
        return load_transformers(
            config.name, task=infer_task(config, data_kind), num_classes=classes, label_names=label_names,
            trust_remote_code=config.trust_remote_code, dtype=config.dtype,
            gradient_checkpointing=config.gradient_checkpointing, meta=meta,
        )
    if config.source == "python":
        return load_python_model(config.name, checkpoint=config.checkpoint, num_classes=classes, head=config.head,
                                 meta=meta)
    return load_demo_model(config.name, num_classes=classes, label_names=label_names, meta=meta)


def parse_model_spec(spec: str, *, task: str | None = None) -> ModelConfig:
    """``torchvision:NAME``, ``transformers:ID_OR_FOLDER``, ``python:FILE.py:FUNCTION`` or ``demo:NAME``.

    Anything else is refused with the spec :func:`suggest_model_spec` guesses was meant, if any.
    """
    source, sep, name = spec.partition(":")
    if not sep or not name or source not in MODEL_SOURCES:
        suggestion = suggest_model_spec(spec)
        raise ValueError(
            f"model must be torchvision:NAME, transformers:ID_OR_FOLDER, python:FILE.py:FUNCTION or demo:NAME; "
            f"got {spec!r}" + (f" — did you mean {suggestion}?" if suggestion else "")
        )
    return ModelConfig(source=source, name=name, task=task, weights="random")


def suggest_model_spec(spec: str) -> str | None:
    """The full spec a bare or mistyped one most likely means, or None when nothing fits.

    In order: a demo name (``demo:text``), a torchvision model, exactly or but for case and
    punctuation (``ResNet-18`` -> ``torchvision:resnet18``), a Python file with a factory
    (``python:net.py:build``), a local folder or a hub-style id ``org/name``
    (``transformers:...``).  Only an unknown ``source:`` prefix is looked past (``tv:resnet18``).
    """
    text = spec.strip()
    source, sep, rest = text.partition(":")
    if sep and source not in MODEL_SOURCES and rest and not _is_drive(source) and not source.endswith(".py"):
        text = rest  # "tv:resnet18", "hf:org/name": the name after an unknown source
    if not text:
        return None
    if text.lower() in DEMO_NAMES:
        return f"demo:{text.lower()}"
    torchvision_name = _torchvision_name(text)
    if torchvision_name:
        return f"torchvision:{torchvision_name}"
    file, sep, factory = text.rpartition(":")
    if sep and file.endswith(".py") and factory:
        return f"python:{text}"
    if Path(text).expanduser().is_dir() or _HUB_ID.fullmatch(text):
        return f"transformers:{text}"
    return None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name", as the Hugging Face hub spells ids


def _is_drive(source: str) -> bool:
    return len(source) == 1 and source.isalpha()  # "C:\\models\\bert": a Windows path, not a source


def _torchvision_name(text: str) -> str | None:
    def squash(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    try:
        names = torchvision_names()
    except ImportError:  # torchvision is a dependency, but a suggestion must never be what fails
        return None
    by_squashed = {squash(n): n for n in names}
    return text if text in names else by_squashed.get(squash(text))


def build_on_meta(spec: str, *, task: str | None = None):
    """The model ``spec`` names, built on the meta device (for browsing; nothing allocated)."""
    config = parse_model_spec(spec, task=task)
    if config.source == "transformers" and task is None:
        return _transformers_base_on_meta(config.name)
    return load_model(config, meta=True).model


def _transformers_base_on_meta(name: str):
    # Without a task, browse the bare backbone (AutoModel): every architecture has one.
    import torch
    from transformers import AutoModel


    config = load_config(name)
    with torch.device("meta"):
        return AutoModel.from_config(config)
