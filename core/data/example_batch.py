"""A fixed example batch from the run's data, for checks a user can reproduce (the export dialog's).

The first validation samples, in order (training ones when there is no validation split), so
the same figure comes out every time the check runs.
"""

from __future__ import annotations

from typing import Any

from ..models.loaded_model import LoadedModel
from ..run_config import DataConfig
from .bundle import build_datasets, read_label_names
from .collate import MODEL_INPUTS

EXAMPLE_BATCH = 8  # samples in the check batch: enough to cover several classes, cheap on a CPU


def export_example_inputs(data: DataConfig, loaded: LoadedModel, count: int = EXAMPLE_BATCH) -> Any:
    """The first ``count`` validation samples (training ones when there is no validation split), as the
    model's forward takes them: a pixel tensor, or a dict of ``input_ids``/``attention_mask``."""
    bundle = build_datasets(data, loaded, read_label_names(data))
    dataset = bundle.validation if bundle.validation is not None and len(bundle.validation) else bundle.train
    batch = bundle.collate([dataset[i] for i in range(min(count, len(dataset)))])
    if loaded.forward_style == "pixels":
        return batch["pixel_values"]
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}
