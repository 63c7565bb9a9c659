"""A user's own model: ``path/to/file.py:factory_name``, with an optional safetensors checkpoint.

The file is imported as a module and the factory called with no arguments (or with
``num_classes=`` when it takes that parameter).  Only the user's own file runs; the
checkpoint is read with the safe loader, never unpickled.

What the studio reads from the model the factory returns (all optional):

* ``image_mode`` — the PIL mode images are converted to (default ``"RGB"``).
* ``label_names`` — the names of its outputs, in order (``predict`` and the Try tab show them;
  without them outputs are ``class 0``, ``class 1``, ...).
* ``studio_preprocess(inputs: list) -> batch`` — turns the user's inputs (what they typed or
  picked in the Try tab, or ``lora-studio predict``'s INPUTs: strings, paths, PIL images) into
  one batch the model takes: a tensor (``model(batch)``) or a dict (``model(**batch)``).
  Without it, inputs are images, converted to ``image_mode``, as ``[0, 1]`` CHW tensors.
* ``studio_postprocess(logits) -> list[list[LabelScore]] | None`` — names the model's output
  for each input (best first; ``LabelScore(label, probability)`` from ``lora_studio.core``).
  Returning None shows the raw output instead (its shape, argmax and largest values), as for a
  model that has neither this hook nor ``label_names``.

One ``studio_preprocess`` batch feeds both sides: the adapted model, then the base (adapters
disabled), each in eval mode without gradients; ``studio_postprocess`` gets each side's output
(float32) in turn.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from ..disk.safe_loading import load_weights
from .heads import find_head, head_classes
from .loaded_model import LoadedModel


def _factory(spec: str):
    file, _, function = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (model.name is 'file.py:function')")
    module_name = f"lora_studio_user_model_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling-free introspection look modules up here
    module_spec.loader.exec_module(module)
    factory = getattr(module, function, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{path} has no function {function!r}; it defines: {', '.join(found) or 'nothing callable'}")
    return factory


def load_python_model(
    spec: str, *, checkpoint: str | None = None, num_classes: int | None = None, head: str | None = None,
    meta: bool = False,
) -> LoadedModel:
    """Build the model ``spec`` names and load ``checkpoint`` (safetensors) into it, strictly."""
    factory = _factory(spec)
    kwargs = {"num_classes": num_classes} if num_classes and "num_classes" in inspect.signature(factory).parameters else {}
    if meta:
        with torch.device("meta"):
            model = factory(**kwargs)
    else:
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint and not meta:
        state = load_weights(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {checkpoint} does not fit {spec}: {str(exc).splitlines()[0]}") from None
    head_name = head
    if head_name is None:
        try:
            head_name = find_head(model)
        except ValueError:
            head_name = None
    return LoadedModel(
        model=model, task="image-classification", forward_style="pixels", head=head_name,
        num_classes=head_classes(model, head_name), image_mode=getattr(model, "image_mode", "RGB"),
        label_names=_label_names(model),
        name_or_path=spec, notes=[f"weights from {checkpoint}"] if checkpoint else [],
    )


def _label_names(model: nn.Module) -> list[str] | None:
    names = getattr(model, "label_names", None)
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return None
