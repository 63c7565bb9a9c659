"""What a variant keeps on an adapter layer beside A and B: extra containers, masks, and finding them again.

A variant that needs more than the two factors (AdaLoRA's singular values, the
entry masks of Sparse and Pruning-aware LoRA) registers a container on the layer,
keyed by adapter name like ``lora_A``/``lora_B``, and lists it in the layer's
``factor_attributes``: freezing, parameter counts, deletion and saving then see it
without knowing the variant.  Masks are buffers, not parameters, so they are saved
and moved with the model but no optimizer or parameter count ever sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, adapter_layers

BehaviourT = TypeVar("BehaviourT", bound=AdapterBehaviour)


def buffer_name(key: str) -> str:
    """A weight key as a buffer/parameter name (names cannot contain dots: ``out_proj.weight``)."""
    return key.replace(".", "_")


class MaskSet(nn.Module):
    """The boolean masks of one adapter on one layer, one buffer per adapted weight."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, mask in masks.items():
            self.register_buffer(buffer_name(key), mask)

    def get(self, key: str) -> torch.Tensor:
        """The mask of weight ``key``."""
        return getattr(self, buffer_name(key))


def variant_container(layer: AdapterLayer, attribute: str) -> nn.ModuleDict:
    """The per-adapter container ``attribute`` of ``layer`` (an ``nn.ModuleDict``), registered on first use."""
    if attribute not in layer.factor_attributes:
        layer.add_module(attribute, nn.ModuleDict())
        layer.factor_attributes.append(attribute)
    return getattr(layer, attribute)


def layers_with_behaviour(
    model: nn.Module, adapter: str, kind: type[BehaviourT]
) -> Iterator[tuple[str, AdapterLayer, BehaviourT]]:
    """Every layer where ``adapter`` runs a behaviour of type ``kind``, with its name and that behaviour."""

    for name, layer in adapter_layers(model):
        behaviour = layer.behaviours.get(adapter)
        if isinstance(behaviour, kind):
            yield name, layer, behaviour
