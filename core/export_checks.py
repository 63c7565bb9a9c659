"""The checks behind the window's export dialog: a fixed example batch, and reloading a saved adapter.

A merged export is checked by :func:`~.merged_export.verify_export`; an adapter folder is
checked here the same way — a plain copy of the base gets the adapter back from disk and
must give the live model's outputs.  Both compare on one *fixed* batch (the first
validation samples, in order), so the figure the user sees can be reproduced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .adapter_io import load_adapter
from .adapters import active_adapter, adapter_state, get_adapter_config
from .adapters import variant_inputs as variant_inputs_context
from .data import build_datasets, read_label_names
from .merged_export import _outputs, _plain_structure, max_output_difference
from .models.loaded_model import LoadedModel
from .run_config import DataConfig
from .training.task_loss import _MODEL_INPUTS
from .variants import get_variant

EXAMPLE_BATCH = 8  # samples in the check batch: enough to cover several classes, cheap on a CPU


def export_example_inputs(data: DataConfig, loaded: LoadedModel, count: int = EXAMPLE_BATCH) -> Any:
    """The first ``count`` validation samples (training ones when there is no validation split), as the
    model's forward takes them: a pixel tensor, or a dict of ``input_ids``/``attention_mask``."""
    bundle = build_datasets(data, loaded, read_label_names(data))
    dataset = bundle.validation if bundle.validation is not None and len(bundle.validation) else bundle.train
    batch = bundle.collate([dataset[i] for i in range(min(count, len(dataset)))])
    if loaded.forward_style == "pixels":
        return batch["pixel_values"]
    return {k: v for k, v in batch.items() if k in _MODEL_INPUTS}


def verify_adapter(folder: str | Path, model: nn.Module, example_inputs: Any, adapter_name: str = "default") -> float:
    """Load the adapter saved in ``folder`` onto a plain copy of ``model``'s base and return the largest
    output difference from the live ``model`` on ``example_inputs`` (0 means a faithful save)."""
    reloaded = load_adapter(_plain_structure(model), folder, adapter_name)
    with _forward_inputs(model, example_inputs), _forward_inputs(reloaded, example_inputs):
        return max_output_difference(_outputs(model, example_inputs), _outputs(reloaded, example_inputs))


def _forward_inputs(model: nn.Module, example_inputs: Any) -> contextlib.AbstractContextManager:
    """The variant's own per-batch inputs (e.g. task ids), for variants that cannot run without them."""
    if adapter_state(model) is None:
        return contextlib.nullcontext()
    variant = get_variant(get_adapter_config(model, active_adapter(model)).variant)
    first = next(iter(example_inputs.values())) if isinstance(example_inputs, Mapping) else example_inputs
    extra = variant.example_inputs(len(first))
    return variant_inputs_context(model, **extra) if extra else contextlib.nullcontext()
