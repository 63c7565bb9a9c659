"""Loading the model a run config names, from whichever source it comes: the one dispatch point."""


from __future__ import annotations

from ..run_config import MODEL_SOURCES, ModelConfig
from .demo_models import load_demo_model
from .loaded_model import LoadedModel
from .python_factory import load_python_model
from .torchvision_models import load_torchvision
from .transformers_models import load_config, load_transformers


def infer_task(config: ModelConfig, data_kind: str | None = None) -> str:
    """The model's task: as configured, else what the source or the data implies."""
    if config.task:
        return config.task
    if config.source in ("torchvision", "python") or (config.source == "demo" and config.name == "digits"):
        return "image-classification"
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
    """``torchvision:NAME``, ``transformers:ID_OR_FOLDER``, ``python:FILE.py:FUNCTION`` or ``demo:NAME``."""
    source, sep, name = spec.partition(":")
    if not sep or not name or source not in MODEL_SOURCES:
        raise ValueError(
            f"model must be torchvision:NAME, transformers:ID_OR_FOLDER, python:FILE.py:FUNCTION or demo:NAME; "
            f"got {spec!r}"
        )
    return ModelConfig(source=source, name=name, task=task, weights="random")


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
