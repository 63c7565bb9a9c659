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
from ..disk.safe_loading import load_safetensors, read_json_object

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
    """What a checkpoint stores of the model: trainable parameters and all buffers, by state-dict key."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}


def save_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    state: TrainerState,
) -> Path:
    """Write a checkpoint folder atomically; an existing one of the same name is replaced whole."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in checkpoint_tensors(model).items()}
    opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    numpy_state = np.random.get_state()
    meta = {
        "format_version": FORMAT_VERSION,
        "trainer": {k: getattr(state, k) for k in state.__dataclass_fields__},
        "optimizer": opt_json,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "python_random": _jsonable(random.getstate()),
        "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
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
    tensors = load_safetensors(folder / "model.safetensors")
    expected = checkpoint_tensors(model)
    missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise ValueError(f"{folder} does not fit this run's model: missing {missing[:3]}, unexpected {unknown[:3]} "
                         "(was the run config changed?)")
    model.load_state_dict(tensors, strict=False)
    optimizer.load_state_dict(_unflatten_optimizer(load_safetensors(folder / "optimizer.safetensors"),
                                                   meta["optimizer"]))
    if meta["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    rng = load_safetensors(folder / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tuples(meta["python_random"]))
    n = meta["numpy_random"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    return TrainerState(**meta["trainer"])


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
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous().clone()
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
