"""Walking a model's modules as the user sees them: wrappers looked through, adapter internals left out.

Every package above ``layers`` walks models the same way (target matching, the variants'
per-layer state, the disk formats, the counts), so the walkers live here, beside the
wrapper classes they look through.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .base import AdapterLayer
from .modules_to_save import ModulesToSave


@dataclass(frozen=True)
class LogicalModule:
    """A module as the user sees it: its path and the layer itself (unwrapped)."""

    name: str
    module: nn.Module
    inside_attention: bool  # the out-projection owned by an nn.MultiheadAttention


def iter_logical_modules(model: nn.Module) -> Iterator[LogicalModule]:
    """Every module below ``model`` under its original name, adapter internals left out."""

    def walk(module: nn.Module, prefix: str) -> Iterator[LogicalModule]:
        for child_name, child in module._modules.items():
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, AdapterLayer):
                child = child.base_layer
            elif isinstance(child, ModulesToSave):
                child = child.original_module
            yield LogicalModule(name, child, isinstance(module_base(module), nn.MultiheadAttention))
            yield from walk(child, name)

    yield from walk(model, "")


def module_base(module: nn.Module) -> nn.Module:
    """The layer a wrapper stands for (the module itself when it is not a wrapper)."""
    if isinstance(module, AdapterLayer):
        return module.base_layer
    if isinstance(module, ModulesToSave):
        return module.original_module
    return module


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """Every wrapped layer, with its (original) name."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module
