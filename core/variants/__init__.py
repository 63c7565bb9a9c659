"""Registered LoRA variants. Import a variant module here to register it."""

from . import lora  # noqa: F401  (registers "lora")
from . import dora  # noqa: F401  (registers "dora")
from . import pissa  # noqa: F401  (registers "pissa")
from . import lora_plus  # noqa: F401  (registers "lora_plus")
from . import loha  # noqa: F401  (registers "loha")
from . import lokr  # noqa: F401  (registers "lokr")
from . import gated  # noqa: F401  (registers "gated")
from . import multitask  # noqa: F401  (registers "multitask")
from . import hyper  # noqa: F401  (registers "hyper")
from . import qlora  # noqa: F401  (registers "qlora")
from . import adalora  # noqa: F401  (registers "adalora")
from . import sparse  # noqa: F401  (registers "sparse")
from . import pruning  # noqa: F401  (registers "pruning")
from .registry import SettingField, Variant, available_variants, get_variant, register_variant, variant_names

__all__ = ["SettingField", "Variant", "available_variants", "get_variant", "register_variant", "variant_names"]
