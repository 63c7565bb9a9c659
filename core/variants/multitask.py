"""Multi-task (conditional) LoRA: one (A_t, B_t) bank per task, routed per sample by a task id.

::

    sample i with task id t_i:   y_i = base(x_i) + s · B_{t_i} A_{t_i} x_i

The banks are stored stacked in the layer's own factor containers: ``lora_A``'s
weight has shape ``(num_tasks, r, in)`` instead of ``(r, in)`` (and likewise for
every layer type), so freezing, counting, saving and deletion treat them like any
factor.  Each bank is initialised exactly as the layer initialises plain LoRA, so
every task starts as the identity.

The task ids come with the batch: ``with variant_inputs(model, task_ids=ids):``
where ``ids`` is a LongTensor of shape ``(batch,)`` (or one int for the whole
batch).  Routing runs each task's bank on its own samples, along the first
(batch) dimension of the layer input.  Merging picks one task:
``merge(model, task_id=k)`` gives exactly task k's model.

Layers adapted in weight space (MultiheadAttention, RNN cells) apply one weight
to the whole batch, so they cannot route samples to different banks and are
refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from .conditioned import (
    ConditionedBehaviour,
    MissingVariantInputError,
    factor_slots,
    get_slot,
    is_weight_space,
    put_slot,
)
from .registry import Variant, register_variant


@dataclass
class MultiTaskSettings:
    """Settings of Multi-task LoRA."""

    num_tasks: int = field(
        default=2,
        metadata={"help": "Number of tasks: one (A, B) bank each, selected by task ids 0 .. num_tasks-1."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.num_tasks, bool) or not isinstance(self.num_tasks, int) or self.num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {self.num_tasks!r}")


class MultiTaskBehaviour(ConditionedBehaviour):
    """Per-sample routing to stacked task banks; merges the bank named by ``task_id``."""
    forward_path = "own"  # each sample through the bank of its task

    merge_input = "task_id"

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    # -- parameters -------------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        """The layer's own factors, each replaced by a stack of ``num_tasks`` of them."""
        super().create(layer, adapter, r)
        for owner, name in list(factor_slots(layer, adapter)):
            one = get_slot(owner, name)
            stack = torch.empty((self.num_tasks, *one.shape), dtype=one.dtype, device=one.device)
            put_slot(owner, name, nn.Parameter(stack))

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """Each bank gets the layer's plain-LoRA init: one-bank tensors are put in, initialised, copied out."""
        slots = list(factor_slots(layer, adapter))
        stacks = [get_slot(owner, name) for owner, name in slots]
        try:
            for task in range(self.num_tasks):
                singles = [nn.Parameter(torch.empty_like(stack[task])) for stack in stacks]
                for (owner, name), single in zip(slots, singles):
                    put_slot(owner, name, single)
                super().initialise(layer, adapter, init, untie)
                for stack, single in zip(stacks, singles):
                    stack[task].copy_(single)
        finally:
            for (owner, name), stack in zip(slots, stacks):
                put_slot(owner, name, stack)

    # -- the task in effect --------------------------------------------------------------------------
    def check_merge_input(self, value: object) -> int:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value.item())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"task_id must be one integer task id, got {value!r}")
        if not 0 <= value < self.num_tasks:
            raise ValueError(
                f"task_id {value} is out of range: this adapter has num_tasks={self.num_tasks} "
                f"(valid ids 0..{self.num_tasks - 1})"
            )
        return value

    def missing_input_message(self, name: str) -> str:
        return (
            f"Multi-task LoRA merges one task and needs {name}: call merge(model, task_id=k) "
            f"with 0 <= k < {self.num_tasks}"
        )

    def task_ids(self, layer: AdapterLayer, batch: int) -> torch.Tensor:
        """The batch's task ids, checked: integers, one per sample (or one for all), each in range."""
        value = layer.variant_inputs.get("task_ids")
        if value is None:
            raise MissingVariantInputError(
                "Multi-task LoRA needs task_ids with every batch: run the model inside "
                "`with variant_inputs(model, task_ids=ids):` where ids is a LongTensor of shape (batch,) "
                f"with values in 0..{self.num_tasks - 1} (or one int for the whole batch)"
            )
        ids = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"task_ids must hold integer task ids (a LongTensor), got dtype {ids.dtype}")
        if ids.dim() == 0:
            ids = ids.expand(batch)
        if ids.dim() != 1 or ids.shape[0] != batch:
            raise ValueError(
                f"task_ids has shape {tuple(ids.shape)}, but the layer input's first (batch) dimension is {batch}: "
                "give one task id per sample, shape (batch,). Multi-task LoRA routes along the first dimension, "
                "so layers must see batch-first inputs"
            )
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_tasks:
            bad = low if low < 0 else high
            raise ValueError(
                f"task_ids holds {bad}, out of range: this adapter has num_tasks={self.num_tasks} "
                f"(valid ids 0..{self.num_tasks - 1})"
            )
        return ids

    # -- the update ------------------------------------------------------------------------------------
    def bank(self, layer: AdapterLayer, adapter: str, key: str, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``task``'s (A, B) for weight ``key``, in the layer's plain-LoRA shapes."""
        a, b = layer.stored_factors(adapter, key)
        return a[task], b[task]

    def factors(self, layer: AdapterLayer, adapter: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank of the task being merged (or given as ``task_id``): what delta_weight and merge use."""
        return self.bank(layer, adapter, key, self.current_input(layer))

    def update(self, layer: AdapterLayer, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """Each task's bank applied to that task's samples, stitched back in batch order."""
        ids = self.task_ids(layer, x.shape[0]).to(x.device)
        a, _ = layer.stored_factors(adapter, "weight")
        if x.is_floating_point():  # token ids (embeddings) are neither cast nor dropped out
            x = layer.lora_dropout[adapter](x.to(a.dtype))
        scale = layer.scaling[adapter]
        tasks = ids.unique().tolist()
        if len(tasks) == 1:  # a single-task batch needs no gather/scatter
            a_t, b_t = self.bank(layer, adapter, "weight", tasks[0])
            return layer.project_up(layer.project_down(x, a_t, adapter), b_t, adapter) * scale
        out: torch.Tensor | None = None
        for task in tasks:
            rows = (ids == task).nonzero().squeeze(1)
            a_t, b_t = self.bank(layer, adapter, "weight", task)
            part = layer.project_up(layer.project_down(x[rows], a_t, adapter), b_t, adapter)
            if out is None:
                out = part.new_zeros((x.shape[0], *part.shape[1:]))
            out = out.index_add(0, rows, part)  # out of place: autograd reaches every bank
        assert out is not None
        return out * scale


class MultiTask(Variant):
    name = "multitask"
    title = "Multi-task LoRA"
    description = (
        "One LoRA adapter bank (A_t, B_t) per task, all trained together on one frozen base. Every sample "
        "carries a task id and gets its own task's update, so one batch can mix tasks: "
        "y_i = W·x_i + s·B_t·A_t·x_i for sample i of task t. Each bank starts at zero update. Merging picks "
        "one task and gives exactly that task's model; the other tasks stay in the adapter."
    )
    paper = (
        "Task-specific LoRA modules over a shared frozen model, as in Agiza et al., 'MTLoRA: A Low-Rank "
        "Adaptation Approach for Efficient Multi-Task Learning', CVPR 2024 (arXiv:2403.20320), here without "
        "MTLoRA's task-agnostic shared modules; per-sample routing of a mixed batch to its adapters as in "
        "Sheng et al., 'S-LoRA: Serving Thousands of Concurrent LoRA Adapters', 2023 (arXiv:2311.03285)."
    )
    merge_note = (
        "merge(model, task_id=k) merges task k's bank (the merged model is task k's model for every sample); "
        "unmerge before merging another task. A later merge without task_id merges the last task again."
    )
    merge_inputs = ("task_id",)
    settings_class = MultiTaskSettings
    peft_type = None

    def example_inputs(self, batch_size: int) -> dict[str, Any]:
        """Every task present: sample i has task i mod num_tasks (default settings)."""
        return {"task_ids": torch.arange(batch_size) % MultiTaskSettings().num_tasks}

    def forward_inputs(self, merge_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merging task k equals running every sample with task k (one id for the whole batch)."""
        return {"task_ids": int(merge_kwargs["task_id"])} if "task_id" in merge_kwargs else {}

    def merge_example(self, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Merge the last task; the unmerged model equals it when every sample carries that task."""
        task = MultiTaskSettings().num_tasks - 1
        return {"task_id": task}, {"task_ids": torch.full((batch_size,), task, dtype=torch.long)}

    def unsupported_reason(self, layer: AdapterLayer) -> str | None:
        if is_weight_space(layer):
            return (
                "it is adapted in weight space: one weight serves the whole batch, so samples of different "
                "tasks cannot be routed to their own banks; adapt its Linear/Conv layers instead"
            )
        return None

    def behaviour(self, layer: AdapterLayer, settings: MultiTaskSettings) -> AdapterBehaviour:
        return MultiTaskBehaviour(settings.num_tasks)


register_variant(MultiTask())
