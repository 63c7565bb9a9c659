"""Which examples each optimizer step uses, as a pure function of the step.

Epoch ``e`` visits the training set in the order of a permutation seeded by
``(seed, e)``; step ``s`` takes the ``s``-th slice of ``batch_size`` examples of it
(a last partial batch is dropped, so every step sees the same number).  The global
batch is split evenly between processes and each share into ``grad_accumulation``
micro-batches.  Because the plan depends only on the step, a checkpoint's data
position is its step, and a run resumes exactly under any process count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.errors import DataError


@dataclass(frozen=True)
class BatchPlan:
    """The data order of a run."""

    dataset_size: int
    batch_size: int  # global: over all processes and micro-batches
    world_size: int
    grad_accumulation: int
    seed: int

    def __post_init__(self) -> None:
        if self.dataset_size < self.batch_size:
            raise DataError(f"the training set has {self.dataset_size} examples, fewer than one batch of "
                            f"training.batch_size = {self.batch_size}; use a smaller batch or more data")
        share = self.world_size * self.grad_accumulation
        if self.batch_size % share:
            raise ValueError(f"training.batch_size ({self.batch_size}) must be divisible by processes × "
                             f"grad_accumulation ({self.world_size} × {self.grad_accumulation} = {share})")

    @property
    def steps_per_epoch(self) -> int:
        """Full batches in one pass over the data."""
        return self.dataset_size // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def micro_batches(self, step: int, rank: int, order: torch.Tensor | None = None) -> list[list[int]]:
        """The example indices of process ``rank`` at ``step``, one list per micro-batch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch) if order is None else order
        batch = order[position * self.batch_size:(position + 1) * self.batch_size]
        share = self.batch_size // self.world_size
        mine = batch[rank * share:(rank + 1) * share].tolist()
        micro = share // self.grad_accumulation
        return [mine[i * micro:(i + 1) * micro] for i in range(self.grad_accumulation)]
