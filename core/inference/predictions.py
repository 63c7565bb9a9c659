"""Classifier predictions on a user's inputs, for the adapted model and its base (adapters disabled).

The base side is the same model with :func:`~lora_studio.core.adapter.lifecycle.disable_adapters`
around its forward, on the same batch: no second copy of the weights.  Inputs become batches in
:mod:`.inputs`; how the model is run (eval mode, no gradients, its device) is :mod:`.running`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models import LoadedModel
from .inputs import input_label, make_batch
from .running import autocast_or_nothing, has_adapter, inference_mode, is_cancelled, model_device, side_context


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
    """The names of the model's outputs: ``loaded.label_names``, else its config's ``id2label``, else None.

    transformers' placeholder names (``LABEL_0``, ...) are kept: they are what the model's own
    config calls its outputs, and nothing better is known.
    """
    if loaded.label_names:
        return [str(name) for name in loaded.label_names]
    id2label = getattr(getattr(loaded.model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and id2label:
        try:
            by_index = {int(k): str(v) for k, v in id2label.items()}  # JSON configs key by strings
        except (TypeError, ValueError):
            return None
        if sorted(by_index) == list(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    return None


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
    the model's mode restored after.  Raises ValueError naming a bad input (an unreadable image).

    Both sides see the same batch.  ``base`` stays None when the model carries no adapter.  A
    model without label names gets ``class i`` names when its output is ``[batch, num_classes]``,
    and always the raw :class:`OutputSummary` (``adapted_raw``/``base_raw``); a model's
    ``studio_postprocess(logits)`` names its outputs itself (or returns None: raw only).  A
    cancelled ``cancel`` ends the work between batches: the predictions made so far are returned.
    """
    if top_k < 1:
        raise ValueError(f"top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    model = loaded.model
    device = device or model_device(model)
    with_base = compare_base and has_adapter(model)
    names = label_names_of(loaded)
    found: list[Prediction] = []
    items = list(inputs)
    for start in range(0, len(items), batch_size):
        if is_cancelled(cancel):
            break
        chunk = items[start:start + batch_size]
        batch = _to_device(make_batch(loaded, chunk), device)
        with inference_mode(model):
            adapted = _forward(loaded, batch, autocast)
            base = None
            if with_base:
                with side_context(model, "base"):
                    base = _forward(loaded, batch, autocast)
        adapted_scores, adapted_raw = _read(loaded, adapted, names, top_k)
        base_scores, base_raw = _read(loaded, base, names, top_k) if base is not None else (None, None)
        for i, item in enumerate(chunk):
            found.append(Prediction(
                input=input_label(item, start + i),
                adapted=adapted_scores[i] if adapted_scores is not None else [],
                base=(base_scores[i] if base_scores is not None else []) if base is not None else None,
                adapted_raw=adapted_raw[i] if adapted_raw is not None else None,
                base_raw=base_raw[i] if base_raw is not None else None,
            ))
    return found


def model_output(loaded: LoadedModel, batch: Any) -> torch.Tensor:
    """The model's logits for a batch made by :func:`make_batch` (the same call predict makes)."""
    if isinstance(batch, dict):
        out = loaded.model(**batch)
    elif loaded.forward_style == "transformers":
        out = loaded.model(pixel_values=batch)
    else:
        out = loaded.model(batch)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returned a {type(out).__name__}; predict needs a tensor of scores "
                         "(or define studio_postprocess on the model)")
    return out


def _forward(loaded: LoadedModel, batch: Any, autocast) -> torch.Tensor:
    with autocast_or_nothing(autocast):
        out = model_output(loaded, batch)
    return out.float()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch  # a custom preprocess's own structure: the model takes it as it is


def _read(loaded: LoadedModel, logits: torch.Tensor, names: list[str] | None,
          top_k: int) -> tuple[list[list[LabelScore]] | None, list[OutputSummary] | None]:
    """(top-k label scores per input or None, raw summaries per input or None)."""
    post = getattr(loaded.model, "studio_postprocess", None)
    if callable(post):
        named = post(logits)
        if named is not None:
            return [list(scores)[:top_k] for scores in named], None
        return None, _summaries(logits, top_k)
    raw = _summaries(logits, top_k) if names is None else None
    classes = names or ([f"class {i}" for i in range(loaded.num_classes)] if loaded.num_classes else None)
    if logits.dim() != 2 or classes is None or logits.shape[1] != len(classes):
        return None, raw if raw is not None else _summaries(logits, top_k)
    probabilities = torch.softmax(logits, dim=-1).cpu()
    values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=-1)
    scores = [[LabelScore(classes[int(j)], float(p)) for p, j in zip(row_values, row_indices)]
              for row_values, row_indices in zip(values, indices)]
    return scores, raw


def _summaries(logits: torch.Tensor, top_k: int) -> list[OutputSummary]:
    out = []
    for row in logits.detach().cpu():
        flat = row.flatten()
        values, indices = flat.topk(min(top_k, flat.numel()))
        out.append(OutputSummary(shape=tuple(row.shape), argmax=int(flat.argmax()),
                                 top=[(int(j), float(v)) for v, j in zip(values, indices)]))
    return out
