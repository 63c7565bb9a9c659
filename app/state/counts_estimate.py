"""What the current config would train, before anything is attached: parameter counts, the adapter's
file size and a training-memory estimate against the device's memory.  No Qt (the panel shows it).

Everything is read from shapes (``describe`` and ``estimate_training_memory``), so it works on a
meta-device model and never touches the loaded weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lora_studio.core import (
    DataConfig,
    LoraConfig,
    MemoryEstimate,
    ModuleInfo,
    TrainingConfig,
    adapter_parameter_count,
    count_parameters,
    device_description,
    device_total_memory,
    estimate_training_memory,
    resolve_device,
)

if TYPE_CHECKING:
    from torch import nn

ADAPTER_BYTES_PER_PARAMETER = 4  # adapters are saved in float32 (safetensors), whatever the base's precision
IMAGE_POSITIONS = {"digits": 8 * 8}  # pixels per sample the demo feeds; other images default to 224×224
DEFAULT_IMAGE_SIDE = 224


@dataclass(frozen=True)
class CountsEstimate:
    """Counts and sizes for the counts panel."""

    total: int  # base + adapter factors + trained copies of modules_to_save
    trainable: int
    adapter: int  # parameters the adapter file holds
    memory: MemoryEstimate
    device_name: str
    device_bytes: int | None  # None when the device's memory is unknown

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def adapter_file_bytes(self) -> int:
        return self.adapter * ADAPTER_BYTES_PER_PARAMETER

    @property
    def exceeds_device(self) -> bool:
        return self.device_bytes is not None and self.memory.total > self.device_bytes


def tokens_per_micro_batch(training: TrainingConfig, data: DataConfig) -> int:
    """Positions one micro-batch holds: the activation term of the memory estimate scales with it."""
    micro_batch = training.batch_size // training.grad_accumulation
    if data.kind in ("text-classification", "causal-lm"):
        return micro_batch * data.max_length
    side = data.image_size or DEFAULT_IMAGE_SIDE
    return micro_batch * IMAGE_POSITIONS.get(data.kind, side * side)


def device_memory(device: str) -> tuple[str, int | None]:
    """(a readable name, total bytes or None) of the device ``training.device`` picks, by the
    trainer's own choice (``auto``: CUDA, then Apple MPS, then the CPU and its system memory)."""
    try:
        chosen = resolve_device(device)
    except ValueError:  # an explicit device this machine lacks: the run would be refused too
        return f"{device} (not available)", None
    return device_description(chosen), device_total_memory(chosen)


def estimate_counts(
    model: nn.Module, tree: ModuleInfo, lora: LoraConfig, training: TrainingConfig, data: DataConfig
) -> CountsEstimate:
    """Counts for ``model`` with ``lora`` attached (``tree`` is ``describe(model, lora)``)."""
    base = count_parameters(model)
    memory = estimate_training_memory(
        model, lora, precision=training.precision, tokens_per_step=tokens_per_micro_batch(training, data)
    )
    name, total_bytes = device_memory(training.device)
    if training.mode == "full":
        trainable, adapter = base.total, 0
    else:
        # The estimate keeps float32 gradients; the adapter file holds the factors and the saved copies.
        trainable, adapter = memory.gradients // 4, adapter_parameter_count(tree, lora)
    return CountsEstimate(base.total + adapter, trainable, adapter, memory, name, total_bytes)
