"""One process or many under ``torchrun``: who am I, and how do the processes agree.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the trainer then joins a
process group (NCCL on GPUs, gloo on CPUs) and wraps the model in
DistributedDataParallel, or shards it with FSDP2 (``training.distributed = "fsdp"``,
:mod:`.fsdp`).  Only rank 0 logs; rank 0 writes files, except a sharded checkpoint's
per-process files, which every process writes into the folder rank 0 names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and emits events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun; a single-process context otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        started = True
    return DistContext(rank=rank, world_size=world, local_rank=local, started_group=started)


def close_distributed(context: DistContext) -> None:
    """Leave the process group if this run joined it."""
    if context.started_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], context: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over every process (the values themselves alone)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(context: DistContext) -> None:
    """Wait for every process (e.g. while rank 0 writes a checkpoint)."""
    if context.distributed:
        dist.barrier()


def broadcast_text(text: str, context: DistContext, device: torch.device) -> str:
    """Rank 0's ``text`` on every process (e.g. the staging folder all of them write into).

    Sent as UTF-8 bytes in a tensor, not ``broadcast_object_list``: nothing is unpickled.
    """
    if not context.distributed:
        return text
    data = torch.tensor(list(text.encode("utf-8")) if context.is_main else [], dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = data.to(device) if context.is_main else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8")
