"""Parameter counts and a pre-flight estimate of training memory.

Both read only shapes and flags, so they work on a ``meta``-device model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..layers import AdapterLayer, ModulesToSave
from .config import LoraConfig
from .describe import ModuleInfo, describe
from .target_matching import in_modules_to_save

Precision = Literal["float32", "bfloat16", "float16"]
Optimizer = Literal["adamw", "sgd", "sgd-momentum"]

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}  # float32 tensors kept per trainable parameter


@dataclass(frozen=True)
class ParameterCounts:
    """How many parameters a model holds, and how many of them train."""

    total: int  # every parameter, adapters included, shared tensors once
    trainable: int  # requires_grad
    adapter: int  # LoRA factors and modules-to-save copies

    @property
    def base(self) -> int:
        return self.total - self.adapter

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({self.trainable_percent:.3f}%); "
            f"adapter {self.adapter:,}"
        )


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Total, trainable and adapter parameter counts of ``model``."""
    adapter_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            adapter_ids.update(id(p) for attr in module.factor_attributes for p in getattr(module, attr).parameters())
        elif isinstance(module, ModulesToSave):
            adapter_ids.update(id(p) for p in module.modules_to_save.parameters())
    total = trainable = adapter = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        adapter += n if id(p) in adapter_ids else 0
    return ParameterCounts(total, trainable, adapter)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to train, by component.  ``activations`` is a rough, stated term."""

    weights: int  # base weights in the chosen precision + float32 adapter weights
    gradients: int  # float32 gradients of the trainable parameters
    optimizer_states: int  # e.g. AdamW's two moments, float32
    activations: int  # ≈ tokens × (sum of output widths of weighted layers) × bytes; 0 if tokens unknown

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations

    def __str__(self) -> str:
        gib = 1024**3
        return (
            f"≈ {self.total / gib:.2f} GiB (weights {self.weights / gib:.2f}, gradients {self.gradients / gib:.2f}, "
            f"optimizer {self.optimizer_states / gib:.2f}, activations ~{self.activations / gib:.2f})"
        )


def estimate_training_memory(
    model: nn.Module,
    config: LoraConfig | None = None,
    *,
    precision: Precision = "float32",
    optimizer: Optimizer = "adamw",
    tokens_per_step: int | None = None,
) -> MemoryEstimate:
    """Estimate training memory for ``model`` (with ``config``'s adapter added, when given).

    ``tokens_per_step`` is batch size × sequence length (or × spatial positions for images);
    the activation term is an order-of-magnitude figure: one saved output per weighted layer
    per token, in the compute precision.  Weights, gradients and optimizer states are exact
    for the parameters that exist or that ``config`` would add.
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_ELEMENT)}; got {precision!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer!r}")
    if tokens_per_step is not None and tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    counts = count_parameters(model)
    adapter, trainable = counts.adapter, counts.trainable
    tree = describe(model, config)
    if config is not None:
        new = adapter_parameter_count(tree, config)
        biases = _bias_parameters(tree, config)
        adapter += new
        trainable = new + biases if counts.adapter == 0 else trainable + new
    base = counts.total - counts.adapter
    weight_bytes = base * BYTES_PER_ELEMENT[precision] + adapter * 4
    activations = 0
    if tokens_per_step:
        widths = sum(_output_width(node) for node in tree.walk() if node.can_wrap)
        activations = tokens_per_step * widths * BYTES_PER_ELEMENT[precision]
    return MemoryEstimate(
        weights=weight_bytes,
        gradients=trainable * 4,
        optimizer_states=trainable * 4 * OPTIMIZER_STATES[optimizer],
        activations=activations,
    )


def adapter_parameter_count(tree: ModuleInfo, config: LoraConfig) -> int:
    """Parameters ``config``'s adapter adds to the model ``tree`` describes (``describe(model, config)``):
    its new factors plus the trained copies of its ``modules_to_save``, which the adapter file holds too.

    A module trained fully counts once, at its outermost saved module (what ``attach`` copies).
    """
    added = sum(node.added_parameters for node in tree.walk())
    saved = sum(node.total_parameters for node in tree.walk() if _outermost_saved(node.name, config))
    return added + saved


def _outermost_saved(name: str, config: LoraConfig) -> bool:
    return in_modules_to_save(config, name) and not in_modules_to_save(config, name.rpartition(".")[0])


def _bias_parameters(tree, config: LoraConfig) -> int:
    if config.bias == "none":
        return 0
    return sum(
        p.numel
        for node in tree.walk()
        if config.bias == "all" or node.targeted
        for p in node.parameters
        if p.name.startswith("bias")
    )


def _output_width(node) -> int:
    weight = next((p for p in node.parameters if p.name in ("weight", "in_proj_weight", "weight_ih")), None)
    if weight is None:
        return 0
    if node.type_name == "Conv1D":  # stored (in, out)
        return weight.shape[-1]
    if node.type_name == "Embedding":
        return weight.shape[1]
    return weight.shape[0]
