"""Loading a model for the window: the meta-device build first (the tree appears at once), then the
weights.  A plain function in core's ``fn(on_event)`` shape, so :class:`FunctionWorker` runs it off
the UI thread; no Qt here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_studio.core import LoadedModel, ModelConfig, load_model


@dataclass(frozen=True)
class MetaModelBuilt:
    """The architecture, built on the meta device (no weights allocated): enough to show the tree."""

    model: Any  # nn.Module on the meta device
    head: str | None
    task: str | None = None  # image-classification, sequence-classification or causal-lm


@dataclass(frozen=True)
class LoadingStage:
    """A step of loading, for the progress line."""

    text: str


def load_meta_then_weights(
    config: ModelConfig, on_event: Callable[[object], None], *, data_kind: str | None = None
) -> LoadedModel:
    """Build ``config``'s model on the meta device and report it, then load it with its weights."""
    on_event(LoadingStage(f"Building {config.source}:{config.name} on the meta device…"))
    meta = load_model(config, data_kind=data_kind, meta=True)
    on_event(MetaModelBuilt(meta.model, meta.head, meta.task))
    on_event(LoadingStage("Loading weights…"))
    return load_model(config, data_kind=data_kind)
