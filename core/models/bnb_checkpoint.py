"""A ``*-bnb-4bit`` transformers checkpoint (bitsandbytes' 4-bit layout) as the QLoRA base, without bitsandbytes.

transformers loads such a checkpoint only through bitsandbytes (on CUDA).  Here the model is built
from its config with its parameters on the meta device (nothing allocated; buffers such as rotary
tables are computed as usual), every 4-bit weight becomes an ``NF4Linear`` over the stored bytes as
they are (``core/disk/bnb_4bit.py``: no dequantise-requantise, so nothing is lost), and the other
tensors are assigned from the files.  The model then trains with ``lora.variant = 'qlora'`` like a
base the studio quantised itself.

Hand-written rather than ``accelerate.init_empty_weights`` (the same patch of
``register_parameter``): accelerate is not a dependency of the studio, and this is a dozen lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..disk.bnb_4bit import bnb_4bit_keys, bnb_4bit_names, nf4_linear_from_bnb, read_bnb_4bit
from ..disk.safe_loading import load_safetensors
from .offline import offline

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def quantization_kind(config: Any) -> str | None:
    """'bnb-4bit' for a bitsandbytes 4-bit checkpoint's config, another method's name for other quantised
    checkpoints (refused by :func:`refuse_unreadable_quantization`), None for a float checkpoint."""
    found = getattr(config, "quantization_config", None)
    if found is None:
        return None
    values = found if isinstance(found, dict) else found.to_dict()
    method = str(values.get("quant_method", "unknown"))
    if method == "bitsandbytes" and values.get("load_in_4bit"):
        return "bnb-4bit"
    if method == "bitsandbytes":
        return "bnb-8bit"
    return method


def stored_quantization(model: nn.Module) -> str | None:
    """How ``model``'s checkpoint stores its weights, read off its transformers config (a meta build will
    do): 'bnb-4bit', another method's name, or None for float weights or a model without a config."""
    config = getattr(model, "config", None)
    return quantization_kind(config) if config is not None else None


def refuse_unreadable_quantization(name: str, kind: str) -> None:
    """A quantised checkpoint of a kind the studio cannot read, refused by name with the way out."""
    raise ValueError(f"{name!r} is a {kind}-quantised checkpoint, which the studio cannot load; pick the model's "
                     "float weights (or a *-bnb-4bit one) and train it with lora.variant = 'qlora'")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no initialisation) and
    their buffers on the CPU as usual (rotary and position tables are computed, not stored)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def stored_tensors(name: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint ``name`` (a local folder, or a hub id: its files fetched or cached)."""
    folder = Path(name)
    if folder.is_dir():
        files = _local_files(folder)
    else:
        files = _hub_files(name)
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(load_safetensors(path))
    return tensors


def _local_files(folder: Path) -> list[Path]:
    if (folder / _INDEX).is_file():
        index = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
        return [folder / shard for shard in sorted(set(index.get("weight_map", {}).values()))]
    if (folder / _SINGLE).is_file():
        return [folder / _SINGLE]
    raise FileNotFoundError(f"{folder} holds no {_SINGLE} (or {_INDEX}): a *-bnb-4bit checkpoint is read from "
                            "safetensors files only")


def _hub_files(repo_id: str) -> list[Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> Path:
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline()))
        except EntryNotFoundError:
            raise
        except Exception as exc:  # offline, unknown repository, no access: one message for all of them
            where = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline() else "not reachable"
            raise OSError(f"could not fetch {filename} of {repo_id!r}: {where} ({type(exc).__name__}). Give a local "
                          "folder with the checkpoint instead") from None

    try:
        index = json.loads(fetch(_INDEX).read_text(encoding="utf-8"))
    except EntryNotFoundError:
        return [fetch(_SINGLE)]
    return [fetch(shard) for shard in sorted(set(index.get("weight_map", {}).values()))]


def load_bnb_4bit_into(model: nn.Module, tensors: dict[str, torch.Tensor], *, compute_dtype: torch.dtype,
                       fresh: tuple[str, ...] = ()) -> int:
    """Fill ``model`` (built under :func:`parameters_on_meta`) from a bitsandbytes 4-bit state dict.

    Every 4-bit weight's linear layer becomes an ``NF4Linear`` over the stored tensors; the rest is
    assigned as stored (cast to the model's dtype) and tied weights are tied again.  Modules named in
    ``fresh`` (a new classification head) are initialised instead of read.  Returns how many layers
    are 4-bit.  A tensor the model needs but the files lack is refused by name.
    """
    names = bnb_4bit_names(tensors)
    owned = {key for name in names for key in bnb_4bit_keys(tensors, name)}
    for weight_name in names:
        module_name = weight_name.removesuffix(".weight")
        parent_name, _, child = module_name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"the checkpoint's 4-bit weight {weight_name!r} has no layer in the model its "
                             "config.json builds; is config.json from another model?") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{weight_name!r} is stored in 4 bits, but {module_name!r} is a "
                             f"{type(module).__name__}, not a linear layer; the studio reads 4-bit linear layers only")
        weight = read_bnb_4bit(tensors, weight_name)
        if weight.layout.shape != (module.out_features, module.in_features):
            raise ValueError(f"{weight_name!r} holds shape {weight.layout.shape}, but the layer is "
                             f"({module.out_features}, {module.in_features}); is config.json from another model?")
        bias_key = f"{module_name}.bias"
        bias = None
        if module.bias is not None:
            if bias_key not in tensors:
                raise ValueError(f"the checkpoint has no {bias_key!r}, which the model needs")
            bias = nn.Parameter(tensors[bias_key].to(compute_dtype), requires_grad=False)
            owned.add(bias_key)
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                nf4_linear_from_bnb(weight, bias, compute_dtype=compute_dtype))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), compute_dtype)
    rest = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items() if k not in owned}
    model.load_state_dict(rest, strict=False, assign=True)
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    for module_name in fresh:
        module = model.get_submodule(module_name)
        module.to_empty(device="cpu")
        for part in module.modules():
            reset = getattr(part, "reset_parameters", None)
            if callable(reset):
                reset()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {shown}; it is incomplete "
                         "or its config.json is from another model")
    return len(names)


__all__ = ["load_bnb_4bit_into", "parameters_on_meta", "quantization_kind", "refuse_unreadable_quantization",
           "stored_quantization", "stored_tensors"]
