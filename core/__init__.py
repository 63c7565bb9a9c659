"""LoRA Studio's engine: adapters for any PyTorch model, as a plain Python library.

Everything the window and the CLI use is importable from here; ``app/`` reaches
the engine only through this module (a test enforces it).

    >>> from lora_studio.core import LoraConfig, attach, merge_and_unload
"""

from .adapter_io import AdapterMismatchError, load_adapter, save_adapter
from .adapters import (
    AdapterState,
    active_adapter,
    adapter_layers,
    attach,
    delete_adapter,
    disable_adapters,
    get_adapter_config,
    list_adapters,
    merge,
    merge_and_unload,
    set_active_adapter,
    unload,
    unmerge,
    variant_inputs,
)
from .combination import add_weighted_adapter
from .config import LoraConfig
from .counting import MemoryEstimate, ParameterCounts, count_parameters, estimate_training_memory
from .inspect import ModuleInfo, ParameterInfo, describe
from .layers import (
    SUPPORTED_TYPES_TEXT,
    AdapterBehaviour,
    AdapterLayer,
    MergeNotSupportedError,
    ModulesToSave,
    NonFiniteDeltaError,
)
from .merged_export import ExportResult, export_merged, verify_export
from .safe_loading import CorruptFileError, UnsafeFileError, load_weights
from .target_matching import TargetPreview, match_targets, preview_targets
from .data import DataBundle, DataError, build_datasets, read_label_names
from .demo import DEMOS, demo_config
from .models import DEMO_NAMES, LoadedModel, build_on_meta, load_model, parse_model_spec, torchvision_names
from .run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from .training import (
    CancelToken,
    CheckpointSaved,
    EvalMetrics,
    Event,
    Failed,
    Finished,
    StepMetrics,
    TrainingWarning,
    TrainResult,
    read_metrics,
    resume_run,
    train,
)
from .training_hooks import after_optimizer_step, optimizer_param_groups, regularization_loss, variant_summary
from .variants import SettingField, Variant, available_variants, get_variant
from .variants.conditioned import MissingVariantInputError

__version__ = "0.1.0"

__all__ = [
    # runs: models, data, the run config and the training engine (grown for the window)
    "DEMO_NAMES",
    "DEMOS",
    "demo_config",
    "CancelToken",
    "CheckpointSaved",
    "DataBundle",
    "DataConfig",
    "DataError",
    "EvalMetrics",
    "Event",
    "Failed",
    "Finished",
    "LoadedModel",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "StepMetrics",
    "TrainingConfig",
    "TrainingWarning",
    "TrainResult",
    "build_datasets",
    "build_on_meta",
    "load_model",
    "parse_model_spec",
    "read_label_names",
    "read_metrics",
    "resume_run",
    "torchvision_names",
    "train",
    # adapters
    "SUPPORTED_TYPES_TEXT",
    "AdapterBehaviour",
    "AdapterLayer",
    "AdapterMismatchError",
    "AdapterState",
    "CorruptFileError",
    "ExportResult",
    "LoraConfig",
    "MemoryEstimate",
    "ModuleInfo",
    "MergeNotSupportedError",
    "MissingVariantInputError",
    "ModulesToSave",
    "NonFiniteDeltaError",
    "ParameterCounts",
    "ParameterInfo",
    "TargetPreview",
    "UnsafeFileError",
    "SettingField",
    "Variant",
    "active_adapter",
    "adapter_layers",
    "add_weighted_adapter",
    "attach",
    "available_variants",
    "count_parameters",
    "delete_adapter",
    "describe",
    "disable_adapters",
    "estimate_training_memory",
    "export_merged",
    "get_adapter_config",
    "get_variant",
    "list_adapters",
    "load_adapter",
    "load_weights",
    "match_targets",
    "merge",
    "merge_and_unload",
    "preview_targets",
    "save_adapter",
    "set_active_adapter",
    "unload",
    "after_optimizer_step",
    "optimizer_param_groups",
    "regularization_loss",
    "variant_summary",
    "unmerge",
    "variant_inputs",
    "verify_export",
]

# The window's data preview and export checks (issue 6, data panel and export dialog).
from .data import demo_sentences_path  # noqa: E402
from .data.preview import DataPreview, PreviewSample, data_columns, preview_data  # noqa: E402
from .export_checks import EXAMPLE_BATCH, export_example_inputs, verify_adapter  # noqa: E402

__all__ += [
    "DataPreview",
    "EXAMPLE_BATCH",
    "PreviewSample",
    "data_columns",
    "demo_sentences_path",
    "export_example_inputs",
    "preview_data",
    "verify_adapter",
]

# The window's run and history panels (issue 6): per-layer update norms, run folders read back.
from .training import layer_update_norms, load_run_config, load_trained_run  # noqa: E402

__all__ += ["layer_update_norms", "load_run_config", "load_trained_run"]

# The `lora-studio` command (issue 6): a dispatcher in app/ opens the window or hands over to the CLI.
from .cli import main as cli_main  # noqa: E402

__all__ += ["cli_main"]
