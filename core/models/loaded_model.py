"""What every model source returns: the model and what a trainer needs to feed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class LoadedModel:
    """A built model with its task, head, and preprocessing.

    ``forward_style`` says how a batch reaches it: ``"pixels"`` calls ``model(pixel_values)``
    (torchvision, demos, most hand-written models); ``"transformers"`` calls
    ``model(**inputs)`` and reads ``.logits``.
    """

    model: nn.Module
    task: str  # image-classification, sequence-classification or causal-lm
    forward_style: str  # "pixels" or "transformers"
    head: str | None = None  # the (new) classifier head's module name: trained fully with the adapter
    num_classes: int | None = None
    label_names: list[str] | None = None  # the classes' names in output order (None: unnamed, or not a classifier)
    tokenizer: Any = None  # transformers tokenizer for text tasks
    image_transform: Callable[[Any], Any] | None = None  # PIL image -> CHW float tensor
    image_mode: str = "RGB"  # PIL mode images are converted to before the transform
    name_or_path: str = ""
    notes: list[str] = field(default_factory=list)  # things the user should know (head replaced, ...)
