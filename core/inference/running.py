"""How inference runs a model: eval mode without gradients (modes restored after), on its own
device, and the base side as the same model with its adapters disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from ..adapter.lifecycle import adapted_root, disable_adapters
from ..layers import adapter_layers

SIDES = ("adapted", "base")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the first parameter's, or buffer's, device; CPU for none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def has_adapter(model: nn.Module) -> bool:
    """True when adapters are attached to ``model`` (or to the one sub-module they were attached to)."""
    return adapted_root(model) is not None


def has_merged_adapter(model: nn.Module) -> bool:
    """True when some adapted layer has an adapter merged into its base weights."""
    return any(layer.merged for _, layer in adapter_layers(model))


@contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients inside the block; every sub-module's own mode after.

    Plain ``torch.no_grad`` rather than ``inference_mode``: a live training model is borrowed
    between steps, and tensors a module caches under inference mode could not be saved for
    backward afterwards.  Modes are restored module by module, so a frozen sub-module the user
    keeps in eval mode stays so.  The flags are set directly (what ``Module.eval`` does, without its
    per-module call): this runs around every generated token.
    """
    training = [module for module in model.modules() if module.training]
    for module in training:  # only the ones in training mode: a model already in eval costs one walk
        module.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for module in training:
            module.training = True


def side_context(model: nn.Module, which: str) -> AbstractContextManager:
    """The adapters disabled for the ``'base'`` side; nothing changed for ``'adapted'``."""
    if which not in SIDES:
        raise ValueError(f"a side is 'adapted' or 'base', got {which!r}")
    return disable_adapters(model) if which == "base" else nullcontext()


def autocast_or_nothing(autocast: Callable[[], AbstractContextManager] | None) -> AbstractContextManager:
    """The caller's autocast (the run's precision), or no autocast."""
    return autocast() if autocast is not None else nullcontext()


def is_cancelled(cancel: object) -> bool:
    """True when ``cancel`` (any object with a ``cancelled`` attribute, e.g. a CancelToken) says stop."""
    return bool(getattr(cancel, "cancelled", False)) if cancel is not None else False
