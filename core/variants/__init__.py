"""Registered LoRA variants. Import a variant module here to register it.

The order of the imports is the order of ``available_variants()``, which is the order
of the window's variant list: plain LoRA first, then the issue's order.
"""
# ruff: noqa: I001  (registration order is meaningful; do not sort)

from . import lora  # noqa: F401  (registers "lora")
from . import dora  # noqa: F401  (registers "dora")
from . import adalora  # noqa: F401  (registers "adalora")
from . import qlora  # noqa: F401  (registers "qlora")
from . import lora_plus  # noqa: F401  (registers "lora_plus")
from . import pissa  # noqa: F401  (registers "pissa")
from . import sparse  # noqa: F401  (registers "sparse")
from . import pruning  # noqa: F401  (registers "pruning")
from . import gated  # noqa: F401  (registers "gated")
from . import multitask  # noqa: F401  (registers "multitask")
from . import hyper  # noqa: F401  (registers "hyper")
from . import loha  # noqa: F401  (registers "loha")
from . import lokr  # noqa: F401  (registers "lokr")
from .conditioned import MissingVariantInputError
from .registry import SettingField, Variant, available_variants, get_variant, register_variant, variant_names

__all__ = [
    "MissingVariantInputError",
    "SettingField", "Variant", "available_variants", "get_variant", "register_variant", "variant_names"]
