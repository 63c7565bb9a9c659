"""Classifier predictions on a user's inputs, for the adapted model and its base (adapters disabled).

CONTRACT STUB (filled in by the inference work): the dataclasses and signatures are fixed; the
bodies are to be written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models import LoadedModel


@dataclass(frozen=True)
class LabelScore:
    """One label and its softmax probability."""

    label: str
    probability: float


@dataclass(frozen=True)
class OutputSummary:
    """A model's raw output for one input when it has no labels to name (a custom factory model
    without a ``studio_postprocess``): its shape, argmax and largest values."""

    shape: tuple[int, ...]
    argmax: int
    top: list[tuple[int, float]]  # (index, value), largest first


@dataclass(frozen=True)
class Prediction:
    """One input's prediction: top-k for the adapted model and (when asked) for its base."""

    input: str  # the text, or the image's path, as the user gave it
    adapted: list[LabelScore]  # top-k, best first (empty when only ``raw`` applies)
    base: list[LabelScore] | None = None  # None when the base was not asked for (or there is no adapter)
    adapted_raw: OutputSummary | None = None
    base_raw: OutputSummary | None = None

    @property
    def changed(self) -> bool:
        """True when the base's top label differs from the adapted model's."""
        if self.base is None or not self.base or not self.adapted:
            return False
        return self.base[0].label != self.adapted[0].label


def label_names_of(loaded: LoadedModel) -> list[str] | None:
    """The names of the model's outputs: ``loaded.label_names``, else its config's ``id2label``, else None."""
    raise NotImplementedError


def predict(
    loaded: LoadedModel,
    inputs: Sequence[str | Path | Any],
    *,
    top_k: int = 3,
    compare_base: bool = True,
    device: torch.device | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
    cancel: Any = None,  # a CancelToken: checked between batches
    batch_size: int = 32,
) -> list[Prediction]:
    """Run ``inputs`` (texts for a text classifier; image paths or PIL images for an image
    classifier; what ``studio_preprocess`` takes for a custom model) through the model with its
    active adapter and, with ``compare_base``, with adapters disabled; eval mode, no gradients,
    the model's mode restored after.  Raises ValueError naming a bad input (an unreadable image)."""
    raise NotImplementedError
