"""Resumable checkpoints: everything needed to continue a run exactly, and nothing pickled.

A checkpoint is a folder ``checkpoints/step-00000120/`` written atomically (built
beside its final name, then renamed into place), holding:

* ``model.safetensors`` — the trainable tensors (adapter factors, saved modules, or
  every weight in full fine-tuning) and every buffer (BatchNorm statistics move in
  training even when their layer is frozen);
* ``optimizer.safetensors`` — AdamW's moments and step counts;
* ``rng.safetensors`` — torch's CPU and CUDA generator states;
* ``state.json`` — the step (which is also the data position and the schedule's
  state, see ``batch_plan``), the optimizer's groups, the gradient scaler, the best
  evaluation so far, early-stopping patience, and Python's and NumPy's generators.

An FSDP run (``training.distributed = "fsdp"``, :mod:`.fsdp`) writes a *sharded* checkpoint
(:func:`save_sharded_checkpoint`) into the same kind of folder: ``model.safetensors`` whole
(rank 0 gathers the trainable tensors one at a time, so every reader of a checkpoint --
``load_for_inference``, export, the window -- reads it as any other), and per process ``r`` of
``n`` what is sharded: ``optimizer-rank{r}-of-{n}.safetensors`` (its shard of AdamW's moments)
and ``rng-rank{r}-of-{n}.safetensors`` (its generators; Python's and NumPy's in the file's
metadata).  ``state.json`` records ``"shards": {"processes": n}``; resuming it needs the same
number of processes and is refused, naming it, otherwise.  Every file is safetensors or JSON:
no ``torch.distributed.checkpoint`` (its metadata is pickled), nothing unpickled.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..disk.atomic_files import is_staging_name, replace_folder
from ..disk.safe_loading import load_safetensors, read_json_object, safetensors_metadata
from ..layers.nf4_linear import NF4Linear
from .distributed import DistContext, all_sum, broadcast_text
from .fsdp import local_tensor

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
_PREFIX = "step-"


@dataclass
class TrainerState:
    """The trainer's own counters, saved with every checkpoint."""

    step: int = 0
    total_steps: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of the model: trainable parameters and all buffers, by state-dict key.

    Except a 4-bit base's packed weights and scales (``NF4Linear``'s buffers): they never change in
    training and a resume rebuilds them bit for bit (QLoRA's quantisation is deterministic, a
    ``*-bnb-4bit`` checkpoint's bytes are read as stored), so storing them would copy most of a model
    into every checkpoint.
    """
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()} - quantised_base_buffers(model)
    return {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}


def quantised_base_buffers(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model``'s 4-bit base weights (packed codes and scales)."""
    return {f"{name}.{key}" if name else key for name, module in model.named_modules()
            if isinstance(module, NF4Linear) for key, _ in module.named_buffers(recurse=False)}


def save_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    state: TrainerState,
) -> Path:
    """Write a checkpoint folder atomically; an existing one of the same name is replaced whole."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in checkpoint_tensors(model).items()}
    opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
    rng = _torch_generators()
    meta = _state_record(state, opt_json, scaler)
    with replace_folder(folder) as stage:
        save_file(tensors, str(stage / "model.safetensors"))
        save_file(opt_tensors, str(stage / "optimizer.safetensors"))
        save_file(rng, str(stage / "rng.safetensors"))
        (stage / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> TrainerState:
    """Restore model tensors, optimizer, scaler and generators from ``folder``; return the trainer state."""
    folder = Path(folder)
    meta = read_checkpoint_state(folder)
    tensors, expected = _model_tensors_fitting(folder, model)
    model.load_state_dict(tensors, strict=False)
    optimizer.load_state_dict(_unflatten_optimizer(load_safetensors(folder / "optimizer.safetensors"),
                                                   meta["optimizer"]))
    if meta["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    _restore_generators(load_safetensors(folder / "rng.safetensors"), meta["python_random"], meta["numpy_random"])
    return TrainerState(**meta["trainer"])


def checkpoint_processes(folder: str | Path) -> int | None:
    """The process count a sharded (FSDP) checkpoint was written by; None for a whole one."""
    shards = read_checkpoint_state(Path(folder)).get("shards")
    return int(shards["processes"]) if isinstance(shards, dict) else None


def resume_problem(folder: str | Path, dist: DistContext, sharded: bool) -> str | None:
    """Why this run (``dist``'s processes, its model ``sharded`` by FSDP or not) cannot resume ``folder``."""
    written = checkpoint_processes(folder)
    if written is None and not sharded:
        return None
    if written is not None and sharded and written == dist.world_size:
        return None
    if written is None:
        return (f"{folder} is a whole (one-process or DDP) checkpoint and this run shards its model with "
                f"training.distributed = 'fsdp' over {dist.world_size} processes; resume it with "
                "training.distributed = 'ddp' (or one process), or start the run again")
    how = (f"{dist.world_size} processes with training.distributed = 'fsdp'" if sharded
           else f"{dist.world_size} process(es) without FSDP")
    return (f"{folder} is a sharded FSDP checkpoint written by {written} processes and this run has {how}; a "
            f"sharded checkpoint resumes only as it was written: resume with training.distributed = 'fsdp' and "
            f"training.processes = {written} (torchrun --nproc_per_node {written}), or start the run again")


def _shard_file(kind: str, dist: DistContext) -> str:
    return f"{kind}-rank{dist.rank}-of-{dist.world_size}.safetensors"


def save_sharded_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    state: TrainerState, dist: DistContext, device: torch.device,
) -> Path:
    """Write an FSDP run's checkpoint folder atomically; every process calls it (see the module docstring).

    Rank 0 stages the folder and sends its name to the others; each writes its own shard files
    into it; rank 0 renames the folder into place only once every process reports its files written
    (a failure anywhere leaves the previous checkpoint as it was, and raises on every process).
    """
    folder = Path(folder)
    whole = _gathered_checkpoint_tensors(model, dist)  # collective: every process, before any writing
    opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
    randoms = {key: json.dumps(value) for key, value in _host_generators().items()}

    def write_own(stage: Path) -> None:
        save_file(opt_tensors, str(stage / _shard_file("optimizer", dist)))
        save_file(_torch_generators(), str(stage / _shard_file("rng", dist)), metadata=randoms)

    if not dist.is_main:
        stage = Path(broadcast_text("", dist, device))
        failed = ""
        try:
            write_own(stage)
        except OSError as exc:
            failed = str(exc)
        if all_sum([float(bool(failed))], dist, device)[0]:
            raise OSError(f"could not write the sharded checkpoint {folder}" + (f": {failed}" if failed else
                                                                                  " (another process failed)"))
        return folder
    with replace_folder(folder) as stage:
        broadcast_text(str(stage), dist, device)
        failed = ""
        try:
            write_own(stage)
            save_file(whole, str(stage / "model.safetensors"))
        except OSError as exc:
            failed = str(exc)
        if all_sum([float(bool(failed))], dist, device)[0]:
            raise OSError(f"could not write the sharded checkpoint {folder}" + (f": {failed}" if failed else
                                                                                  " (another process failed)"))
        meta = _state_record(state, opt_json, scaler) | {"shards": {"processes": dist.world_size}}
        (stage / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_sharded_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    dist: DistContext,
) -> TrainerState:
    """Restore an FSDP run from its sharded checkpoint: each process its own shard of the trainable
    tensors (cut from the whole ``model.safetensors``, without communication), of the optimizer and
    its generators.  The checkpoint must have been written by as many processes (:func:`resume_problem`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    folder = Path(folder)
    meta = read_checkpoint_state(folder)
    problem = resume_problem(folder, dist, sharded=True)
    if problem:
        raise ValueError(problem)
    tensors, expected = _model_tensors_fitting(folder, model)
    with torch.no_grad():
        for key, target in expected.items():
            value = tensors[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{folder}: {key} has shape {tuple(value.shape)}, the model's is "
                                 f"{tuple(target.shape)} (was the run config changed?)")
            if isinstance(target, DTensor):  # this process's slice, exactly as FSDP cut it
                value = distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements,
                                          src_data_rank=None).to_local()
            local_tensor(target).copy_(value)
    shard = folder / _shard_file("optimizer", dist)
    saved = _unflatten_optimizer(load_safetensors(shard), meta["optimizer"])
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved["state"].items():
        param = ordered[index]
        for name, value in list(values.items()):
            own = local_tensor(param)
            if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.dim() > 0 \
                    and value.shape == own.shape:  # a moment (AdamW's step count is a plain scalar)
                values[name] = DTensor.from_local(value.to(own.device), param.device_mesh,
                                                  param.placements, run_check=False, shape=param.shape,
                                                  stride=param.stride())
    optimizer.load_state_dict(saved)
    if meta["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    rng_path = folder / _shard_file("rng", dist)
    randoms = safetensors_metadata(rng_path)
    _restore_generators(load_safetensors(rng_path), json.loads(randoms["python_random"]),
                        json.loads(randoms["numpy_random"]))
    return TrainerState(**meta["trainer"])


def _gathered_checkpoint_tensors(model: nn.Module, dist: DistContext) -> dict[str, torch.Tensor]:
    """Rank 0's whole copy (on the CPU) of what a checkpoint stores of a sharded model; {} elsewhere.

    One tensor at a time (an all-gather each, every process taking part), so no process ever holds
    more than one whole tensor on its device beyond its shards.
    """
    from torch.distributed.tensor import DTensor

    gathered = {}
    for key, value in checkpoint_tensors(model).items():
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        if dist.is_main:
            gathered[key] = whole.detach().to("cpu").contiguous().clone()
    return gathered


def _torch_generators() -> dict[str, torch.Tensor]:
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def _restore_generators(rng: dict[str, torch.Tensor], python_random: Any, numpy_random: Any) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tuples(python_random))
    n = numpy_random
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _host_generators() -> dict[str, Any]:
    """Python's and NumPy's generator states as JSON-ready values (``_restore_generators`` reads them back)."""
    numpy_state = np.random.get_state()
    return {"python_random": _jsonable(random.getstate()),
            "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}


def _state_record(state: TrainerState, opt_json: dict[str, Any], scaler: torch.amp.GradScaler) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "trainer": {k: getattr(state, k) for k in state.__dataclass_fields__},
        "optimizer": opt_json,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        **_host_generators(),
    }


def _model_tensors_fitting(folder: Path, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The checkpoint's model tensors and the model's own they restore, refused when they do not pair up.

    A 4-bit base's buffers that an older checkpoint stored are dropped: the model has them already."""
    tensors = load_safetensors(folder / "model.safetensors")
    for key in quantised_base_buffers(model) & set(tensors):
        del tensors[key]
    expected = checkpoint_tensors(model)
    missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise ValueError(f"{folder} does not fit this run's model: missing {missing[:3]}, unexpected {unknown[:3]} "
                         "(was the run config changed?)")
    return tensors, expected


_STATE_KEYS = ("trainer", "optimizer", "scaler", "python_random", "numpy_random")


def read_checkpoint_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, checked: a damaged or foreign one is refused naming the file
    and the way out (resume from the checkpoint before it)."""
    path = folder / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint (no state.json)")
    fix = (f"delete the folder {folder} to resume from the checkpoint before it, or start the run again "
           "with output.overwrite = true")
    meta = read_json_object(path, fix)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format_version')!r} is not {FORMAT_VERSION}; {fix}")
    missing = [key for key in _STATE_KEYS if key not in meta]
    trainer = meta.get("trainer")
    if missing or not isinstance(trainer, dict) or set(trainer) - set(TrainerState.__dataclass_fields__):
        what = f"no {', '.join(map(repr, missing))}" if missing else "its 'trainer' record is not this version's"
        raise ValueError(f"{path} is damaged ({what}); {fix}")
    return meta


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` steps (sorts by step)."""
    return f"{_PREFIX}{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's complete step checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and not is_staging_name(p.name)
                  and (p / "state.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for index, values in state_dict["state"].items():
        plain[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):  # an FSDP run's moments: this process's shard
                tensors[f"{index}.{key}"] = local_tensor(value.detach()).to("cpu").contiguous().clone()
            else:
                plain[str(index)][key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"state": plain, "param_groups": groups}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in plain["param_groups"]]
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
