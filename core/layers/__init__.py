"""Adapter layers, one per family of PyTorch layer, the rule that picks one, and the module walkers.

:func:`wrapper_for` (in :mod:`.wrapper_choice`) decides whether a module can carry LoRA.
"""

from .base import AdapterLayer, WeightSlot, lora_scaling
from .behaviour import AdapterBehaviour, MergeNotSupportedError, NonFiniteDeltaError
from .conv import ConvLora
from .embedding import EmbeddingLora
from .linear import LinearLora, is_transformers_conv1d
from .modules_to_save import ModulesToSave
from .walk import LogicalModule, adapter_layers, iter_logical_modules, module_base
from .weight_space import WeightSpaceLora
from .wrapper_choice import SUPPORTED_TYPES_TEXT, wrapper_for

__all__ = [
    "AdapterBehaviour",
    "AdapterLayer",
    "MergeNotSupportedError",
    "ConvLora",
    "EmbeddingLora",
    "is_transformers_conv1d",
    "lora_scaling",
    "LinearLora",
    "LogicalModule",
    "ModulesToSave",
    "NonFiniteDeltaError",
    "SUPPORTED_TYPES_TEXT",
    "WeightSlot",
    "WeightSpaceLora",
    "adapter_layers",
    "iter_logical_modules",
    "module_base",
    "wrapper_for",
]
