"""One adapter on one model: its config, which layers it targets, its lifecycle, and what it costs.

``config`` (:class:`LoraConfig`), ``target_matching`` (which layers a config adapts),
``lifecycle`` (attach, switch, disable, merge, unload), ``combination`` (several adapters
into one), ``describe`` (the layer tree) and ``counting`` (parameters and memory).
"""

from .combination import (
    COMBINATION_TYPES,
    DENSITY_COMBINATIONS,
    FACTOR_COMBINATIONS,
    SIGN_COMBINATIONS,
    SVD_COMBINATIONS,
    add_weighted_adapter,
    combination_problem,
)
from .config import ALL_LINEAR, BIAS_CHOICES, INIT_CHOICES, LoraConfig, pattern_matches
from .counting import (
    BatchShape,
    MemoryEstimate,
    ParameterCounts,
    adapter_parameter_count,
    count_parameters,
    estimate_training_memory,
    nf4_bytes,
)
from .describe import ModuleInfo, ParameterInfo, describe
from .lifecycle import (
    AdapterState,
    active_adapter,
    adapted_root,
    adapter_state,
    attach,
    delete_adapter,
    disable_adapters,
    get_adapter_config,
    list_adapters,
    merge,
    merge_and_unload,
    rename_adapter,
    set_active_adapter,
    set_adapter,
    unload,
    unmerge,
    variant_inputs,
)
from .target_matching import TargetPreview, in_modules_to_save, match_targets, name_matches, preview_targets

__all__ = [
    "COMBINATION_TYPES",
    "DENSITY_COMBINATIONS",
    "FACTOR_COMBINATIONS",
    "SIGN_COMBINATIONS",
    "SVD_COMBINATIONS",
    "combination_problem",
    "ALL_LINEAR",
    "BIAS_CHOICES",
    "INIT_CHOICES",
    "AdapterState",
    "LoraConfig",
    "BatchShape",
    "MemoryEstimate",
    "ModuleInfo",
    "ParameterCounts",
    "ParameterInfo",
    "TargetPreview",
    "active_adapter",
    "adapted_root",
    "adapter_parameter_count",
    "adapter_state",
    "add_weighted_adapter",
    "attach",
    "count_parameters",
    "delete_adapter",
    "describe",
    "disable_adapters",
    "estimate_training_memory",
    "nf4_bytes",
    "get_adapter_config",
    "in_modules_to_save",
    "list_adapters",
    "match_targets",
    "merge",
    "merge_and_unload",
    "rename_adapter",
    "set_adapter",
    "name_matches",
    "pattern_matches",
    "preview_targets",
    "set_active_adapter",
    "unload",
    "unmerge",
    "variant_inputs",
]
