"""Everything a run needs before its first step, built from the run config.

The same function serves a fresh run, a resume, an extension and an export, so
the model a checkpoint is loaded into is always built the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..adapter.config import LoraConfig
from ..adapter.lifecycle import attach, oversized_ranks
from ..adapter.target_matching import in_modules_to_save
from ..data import DataBundle, build_datasets, read_label_names
from ..data.packing import truncation_note
from ..layers.nf4_linear import NF4Linear
from ..models import LoadedModel, load_model
from ..run_config import RunConfig
from .batch_plan import BatchPlan
from .distributed import DistContext
from .fsdp import fsdp_problem, shard_model
from .neftune import add_neftune
from .optimizers import build_optimizer
from .variant_hooks import optimizer_param_groups

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunSetup:
    """The built pieces of a run."""

    config: RunConfig
    loaded: LoadedModel
    model: nn.Module  # the plain (unwrapped) model: adapters, checkpoints and evaluation use it (FSDP shards it)
    train_model: nn.Module  # what the loop calls: the model, or its DistributedDataParallel wrapper
    data: DataBundle
    plan: BatchPlan
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    dist: DistContext
    autocast: Callable[[], AbstractContextManager]
    warnings: list[str] = field(default_factory=list)
    hooks: list[RemovableHandle] = field(default_factory=list)  # on the model for this run only (NEFTune)
    # FSDP2 (training.distributed = "fsdp" under torchrun): every parameter is a shard, so every process
    # runs each forward (evaluation, samples) and takes part in gathering what is saved
    sharded: bool = False

    def remove_hooks(self) -> None:
        """Take this run's hooks off the model (the run has ended; the model may be used on)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def build_model(config: RunConfig, *, attach_adapter: bool = True,
                check_ranks: bool = False) -> tuple[LoadedModel, list[str] | None, list[str]]:
    """The model with its adapter attached (or fully trainable), seeded; returns (loaded, labels, notes).

    ``attach_adapter=False`` returns the plain base (to load a saved adapter into).  ``check_ranks``
    (a run about to train) refuses ranks above a layer's smaller dimension; loading a finished
    run never does, so every run folder stays loadable.
    """
    notes: list[str] = []
    torch.manual_seed(config.training.seed)  # the new head and the adapter start the same in every run
    labels = read_label_names(config.data)
    loaded = load_model(config.model, num_classes=len(labels) if labels else None, label_names=labels,
                        data_kind=config.data.kind)
    notes += loaded.notes
    if config.model.gradient_checkpointing and loaded.forward_style != "transformers":
        notes.append("gradient checkpointing is only available for transformers models; training without it")
    if config.training.mode == "head":
        train_only_the_head(loaded.model, [loaded.head, *config.lora.modules_to_save] if loaded.head
                            else list(config.lora.modules_to_save))
        return loaded, labels, notes
    if config.training.mode == "full" and any(isinstance(m, NF4Linear) for m in loaded.model.modules()):
        raise ValueError(f"training.mode = 'full' cannot train {config.model.name}: its layers are stored in 4 bits "
                         "(a bitsandbytes checkpoint), which are not parameters to update; use training.mode = "
                         "'lora' with lora.variant = 'qlora', or load the model's float weights")
    if config.training.mode == "full" or not attach_adapter:
        loaded.model.requires_grad_(config.training.mode == "full")
        return loaded, labels, notes
    lora = training_lora_config(config.lora, loaded.head)
    if check_ranks:
        refuse_oversized_ranks(loaded.model, lora)
    attach(loaded.model, lora)
    return loaded, labels, notes


def refuse_oversized_ranks(model: nn.Module, lora: LoraConfig) -> None:
    """Refuse a rank above a targeted layer's smaller dimension, naming the layers and the ways out.

    Such a rank buys parameters (and memory) but no capacity: the update of an ``n``-wide layer
    has rank ``n`` at most.  PEFT accepts it silently; a run here says so before it starts.
    """
    found = oversized_ranks(model, lora)
    if not found:
        return
    shown = ", ".join(f"{name} (r={rank}, at most {limit})" for name, rank, limit in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    name, _, limit = found[0]
    raise ValueError(
        f"lora: the rank is larger than {len(found)} targeted layer(s) can use: {shown}{more}. A layer's update "
        f"cannot have a rank above its smaller dimension; lower lora.r, give those layers their own rank "
        f"(lora.rank_pattern = {{\"{name}\" = {limit}}}), or leave them out of lora.targets"
    )


def train_only_the_head(model: nn.Module, modules: list[str]) -> None:
    """Freeze everything but ``modules`` (the classifier head and ``lora.modules_to_save`` entries,
    matched as modules_to_save matches them): the 'head' baseline, a linear probe on frozen features."""
    model.requires_grad_(False)
    trained = 0
    for name, param in model.named_parameters():
        if modules and in_modules_to_save(modules, name.rpartition(".")[0]):
            param.requires_grad_(True)
            trained += 1
    if not trained:
        raise ValueError("training.mode = 'head' trains only a classifier head and lora.modules_to_save, and this "
                         "model has neither (a language model has no separate head); name the modules to train in "
                         "lora.modules_to_save, or use training.mode = 'lora' or 'full'")


def training_lora_config(lora: LoraConfig, head: str | None) -> LoraConfig:
    """``lora`` as a run attaches it to a model whose classifier head is ``head`` (None: no head).

    A (new) classifier head must learn the user's classes, so it trains fully, as in PEFT: it is
    added to ``modules_to_save`` unless already there.  The window previews with the same config.
    """
    if head and head not in lora.modules_to_save:
        return lora.replace(modules_to_save=[*lora.modules_to_save, head])
    return lora


def build_run(config: RunConfig, dist: DistContext, device: torch.device) -> RunSetup:
    """Model, data, batch plan, optimizer, scaler and autocast for ``config`` on ``device``.

    Under torchrun the model is wrapped in DistributedDataParallel, or with ``training.distributed =
    "fsdp"`` sharded in place by FSDP2 (:mod:`.fsdp`; what it cannot train is refused here, first).
    """
    sharded = dist.distributed and config.training.distributed == "fsdp"
    problem = fsdp_problem(config, device) if sharded else None
    if problem:
        raise ValueError(problem)
    loaded, labels, notes = build_model(config, check_ranks=True)
    data = build_datasets(config.data, loaded, labels)
    if data.skipped:
        notes.append(f"{len(data.skipped)} unreadable image(s) skipped, e.g. {data.skipped[0]}")
    notes += data.warnings  # data that reads but may mislead (texts in both splits, a class on one side only)
    cut = truncation_note(data.train, data.validation)
    if cut:
        notes.append(cut)
    model = loaded.model.to(device)
    model.train()
    t = config.training
    plan = BatchPlan(len(data.train), t.batch_size, dist.world_size, t.grad_accumulation, t.seed)
    train_model: nn.Module = model
    if sharded:  # in place: the model itself all-gathers each block in its forward
        notes += shard_model(model, dist, device)
    elif dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    groups = optimizer_param_groups(model, lr=t.lr, weight_decay=t.weight_decay)
    for group in groups:
        group["initial_lr"] = group["lr"]  # the schedule scales each group's own peak (LoRA+ has two)
    optimizer = build_optimizer(t.optimizer, groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                                device=device)
    hooks = [add_neftune(model, t.neftune_alpha)] if t.neftune_alpha > 0 else []
    if config.data.packing and any(p.dtype != torch.float32 for p in model.parameters()):
        hooks.append(model.register_forward_pre_hook(_mask_in_model_dtype, with_kwargs=True))
    mixed = t.precision != "float32"
    if mixed and device.type != "cuda":
        notes.append(f"mixed precision ({t.precision}) runs on CUDA only; training in float32 on {device.type}")
        mixed = False
    scaler = torch.amp.GradScaler("cuda", enabled=mixed and t.precision == "float16")

    def autocast() -> AbstractContextManager:
        if not mixed:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[t.precision])

    return RunSetup(config, loaded, model, train_model, data, plan, optimizer, scaler, device, dist, autocast, notes,
                    hooks, sharded)


def _mask_in_model_dtype(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Cast a packed batch's additive 4D mask (float32) to the dtype of the model's embeddings:
    SDPA refuses a float mask of another dtype than its queries (a bfloat16 or float16 model)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.is_floating_point():
        get = getattr(module, "get_input_embeddings", None)
        embedding = get() if callable(get) else None
        weight = getattr(embedding, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype != mask.dtype:
            kwargs = {**kwargs, "attention_mask": mask.to(weight.dtype)}
    return args, kwargs


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]
