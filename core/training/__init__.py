"""The training engine: one plain function, events out, a cancel token in.

    from lora_studio.core.training import train, CancelToken
    result = train(RunConfig.load("run.toml"), on_event=print, cancel=CancelToken())

Under ``torchrun`` the same call trains with DistributedDataParallel; see ``lora_studio.core.__main__``.
"""

from __future__ import annotations

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .class_changes import ClassChange, class_changes
from .devices import DeviceInfo, available_devices, device_description, device_total_memory, resolve_device
from .evaluation import EvalResult, evaluate
from .events import (
    CancelToken,
    CheckpointSaved,
    EvalMetrics,
    Event,
    Failed,
    Finished,
    SampleResult,
    Samples,
    StepMetrics,
    TrainingWarning,
    TrainResult,
)
from .launcher import launch_processes
from .live_model import LiveModel, LiveParts
from .metrics_log import event_from_record, event_record, read_metrics
from .schedule import lr_factor
from .setup import build_model, build_run, training_lora_config
from .trained_run import load_for_inference, load_trained_run
from .trainer import ADAPTER_DIR, BEST_DIR, RUN_CONFIG_FILE, load_run_config, resume_run, train
from .update_norms import layer_update_norms
from .variant_hooks import after_optimizer_step, optimizer_param_groups, regularization_loss, variant_summary

__all__ = [
    "ADAPTER_DIR",
    "BEST_DIR",
    "RUN_CONFIG_FILE",
    "CancelToken",
    "CheckpointSaved",
    "ClassChange",
    "DeviceInfo",
    "EvalMetrics",
    "EvalResult",
    "Event",
    "Failed",
    "Finished",
    "LiveModel",
    "LiveParts",
    "SampleResult",
    "Samples",
    "StepMetrics",
    "TrainResult",
    "TrainingWarning",
    "after_optimizer_step",
    "available_devices",
    "build_model",
    "build_run",
    "class_changes",
    "device_description",
    "device_total_memory",
    "evaluate",
    "event_from_record",
    "event_record",
    "latest_checkpoint",
    "launch_processes",
    "layer_update_norms",
    "list_checkpoints",
    "load_checkpoint",
    "load_run_config",
    "load_for_inference",
    "load_trained_run",
    "lr_factor",
    "optimizer_param_groups",
    "read_metrics",
    "regularization_loss",
    "resolve_device",
    "resume_run",
    "save_checkpoint",
    "train",
    "training_lora_config",
    "variant_summary",
]
