"""Exporting a model with its adapter merged in, and proving the export is right.

:func:`export_merged` never touches the live model: it merges a *copy* (upcast to
float32 first, so the merge itself is float32 whatever the base dtype), rounds the
result to the requested precision once, and writes

* for a transformers model: a complete ``save_pretrained`` folder (config, safetensors
  weights, the tokenizer when one is known) that ``AutoModel.from_pretrained`` opens;
* for any other model: ``<name>.safetensors`` holding the plain state dict (the keys of
  the original architecture, so ``load_state_dict(..., strict=True)`` accepts it, e.g.
  into the same torchvision constructor) and a small ``<name>.export.json`` sidecar
  saying where the architecture comes from.

Given an example batch it reports the largest output difference between the merged
copy and the live (unmerged) model.  :func:`verify_export` reloads what was written and
compares it with the live model the same way.  Outputs are compared in float32 computed
from the stored weights, so the number measures what merging and rounding did to the
weights, not the quirks of a device's half-precision kernels.

What the copy costs: for a float32 model exported in float32, only the merged weights themselves
(every frozen tensor, the adapted layers' own base weights included, is shared with the live model,
and merging gives each adapted weight a new tensor in one ``addmm``); otherwise one extra model in
memory.  Weight files are written by :mod:`.safetensors_writer`: from tensor memory in one pass,
atomically, with the disk writeback overlapping the write (``bench/bench_merge_export.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapter.lifecycle import (
    active_adapter,
    adapted_root,
    get_adapter_config,
    merge,
    merge_and_unload,
    set_active_adapter,
)
from ..adapter.lifecycle import variant_inputs as variant_inputs_context
from ..layers.nf4_linear import NF4Linear
from ..variants import get_variant
from .atomic_files import atomic_write_json, atomic_write_text, replace_folder
from .export_checks import adapter_free_copy, max_output_difference, model_outputs
from .merged_tensors import merged_tensors
from .safe_loading import load_safetensors
from .safetensors_writer import PendingTensor, write_safetensors

PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SIDECAR_FORMAT = "lora-studio-merged/1"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",  # the chat template a run trained with (transformers' names)
)  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_merged` wrote."""

    path: Path  # the save_pretrained folder, or the .safetensors file
    kind: str  # "transformers" or "safetensors"
    precision: str
    adapter_name: str | None  # the adapter merged in (None: the model had none active)
    files: tuple[Path, ...]  # every file written
    max_output_difference: float | None  # merged vs live model on the example batch, if one was given


def is_transformers_model(model: nn.Module) -> bool:
    """True for a transformers ``PreTrainedModel`` (which exports as a ``save_pretrained`` folder)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def merged_copy(
    model: nn.Module,
    adapter_name: str | None = None,
    precision: str = "float32",
    variant_inputs: Mapping[str, Any] | None = None,
    *,
    share_frozen: bool = False,
) -> nn.Module:
    """A plain copy of ``model`` with ``adapter_name`` (default: the active adapter) merged in float32,
    then cast to ``precision``.  ``model`` itself is not changed.  ``variant_inputs`` are the merge
    inputs of variants that merge for a chosen input (e.g. ``{"task_id": 2}``).

    ``share_frozen`` (for a copy that is written and dropped, as :func:`export_merged` does): frozen
    float32 tensors outside every adapter layer are shared with ``model`` instead of copied, when
    nothing on the way (merge, casts, freezing) can change them -- see :func:`_frozen_tensors_to_share`.
    """
    dtype = _dtype(precision)
    memo = _frozen_tensors_to_share(model, dtype) if share_frozen else {}
    merged = copy.deepcopy(model, dict(memo))  # deepcopy adds to its memo: keep ours as it was
    root = adapted_root(merged)  # the model itself, or the adapted sub-module of a wrapped model
    if root is not None and adapter_name is not None:
        set_active_adapter(root, adapter_name)
    merged.to(torch.float32)  # merge in float32 even over a half-precision base
    if root is not None:
        inputs = dict(variant_inputs or {})
        if memo and active_adapter(root) is not None:
            # Base weights shared with the live model get new merged tensors, never an in-place write.
            merge(root, fresh_weights=True, **inputs)
        merge_and_unload(root, **inputs)  # unwraps in place, inside ``merged``
    _dequantise_unadapted(merged)
    return merged.to(dtype).requires_grad_(False)


def _dequantise_unadapted(merged: nn.Module) -> None:
    """4-bit layers no adapter merged into (a ``*-bnb-4bit`` base's untargeted layers) become float layers,
    and the config forgets the quantisation: a merged model is a plain float model every loader reads."""
    for name, module in list(merged.named_modules()):
        if isinstance(module, NF4Linear):
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent) if parent else merged, child,
                    module.to_float_module(module.dequantized_weight(torch.float32), torch.float32))
    config = getattr(merged, "config", None)
    if config is not None and getattr(config, "quantization_config", None) is not None:
        del config.quantization_config


def _frozen_tensors_to_share(model: nn.Module, dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """A ``deepcopy`` memo that makes a copy reuse ``model``'s frozen tensors instead of copying them.

    Merging writes only the weight slots of adapter layers, and :func:`merged_copy` has it write them as
    new tensors (``merge(fresh_weights=True)``), so every frozen tensor outside modules-to-save wrappers
    and adapter factors would otherwise be a byte-for-byte duplicate -- including the adapted layers' own
    base weights, most of a model's bytes.  Sharing is safe only when the casts in :func:`merged_copy`
    are no-ops (every floating tensor is float32 and so is the target: a cast would reassign
    ``param.data`` of the shared tensor), the tensor is frozen (freezing the copy must not freeze the
    live model), and an adapter layer has nothing merged yet and its behaviours all merge through its
    slots (QLoRA replaces the layer).  Otherwise the memo is empty and everything is copied.
    """
    from ..layers import AdapterLayer, ModulesToSave

    if dtype != torch.float32 or not _all_float32(model):
        return {}
    tensors = [*model.parameters(), *model.buffers()]
    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, ModulesToSave):
            inside.update(id(t) for t in (*module.parameters(), *module.buffers()))
        elif isinstance(module, AdapterLayer):
            slots = {id(slot.param) for slot in module.weight_slots().values()}
            # A layer with a merged update may hold untied originals, which a later merge writes in place.
            through_slots = not module.merged_adapters and all(
                b.merges_through_slots for b in module.behaviours.values()
            )
            inside.update(id(t) for t in (*module.parameters(), *module.buffers())
                          if not (through_slots and id(t) in slots))  # fmt: skip
    return {id(t): t for t in tensors if id(t) not in inside and not t.requires_grad}


def export_merged(
    model: nn.Module,
    path: str | Path,
    *,
    precision: str = "float32",
    adapter_name: str | None = None,
    example_inputs: Any = None,
    tokenizer: Any = None,
    architecture: Mapping[str, Any] | None = None,
    variant_inputs: Mapping[str, Any] | None = None,
    checksum: bool = False,
    chat_template: str | None = None,
) -> ExportResult:
    """Write ``model`` with ``adapter_name`` (default: the active one) merged in to ``path``; ``model``
    itself is not changed.

    ``tokenizer`` (transformers only): a tokenizer object, or a folder to copy tokenizer files
    from; by default the files beside the model's own ``name_or_path`` when that is a local
    folder.  ``architecture`` (plain models only) is stored in the sidecar, e.g.
    ``{"torchvision": "resnet18", "kwargs": {"num_classes": 5}}``.  With ``example_inputs`` the
    result carries the largest output difference between the merged copy and the live model.
    ``variant_inputs`` are what a variant that merges for a chosen input needs (its
    ``merge_inputs``, e.g. ``{"task_id": 2}``); the live model is run with the same inputs.
    ``checksum`` (plain models): record the weights file's SHA-256 in the sidecar -- hashed while
    writing, it costs about two and a half times the write itself on a CPU, so it is asked for.
    ``chat_template`` (transformers only): the template a run's chat data was rendered with, written as
    the folder's ``chat_template.jinja`` (which ``AutoTokenizer.from_pretrained`` reads), so the merged
    model renders prompts as training did.  A tokenizer object whose ``chat_template`` is set (a run sets
    it on its model's tokenizer) writes its template anyway.
    """
    root = adapted_root(model)
    name = adapter_name or (active_adapter(root) if root is not None else None)
    path = Path(path)
    transformers_model = is_transformers_model(model)
    if not transformers_model and path.suffix != ".safetensors":
        path = path / "model.safetensors"
    sidecar = {
        "format": SIDECAR_FORMAT,
        "architecture": {"class": _class_path(model), **(architecture or {})},
        "precision": precision,
        "adapter_name": name,
        "lora_config": get_adapter_config(root, name).to_dict() if root is not None and name else None,
    }
    # Written, never run: the merged tensors are read off the live model, no copy of it is made.  A
    # transformers folder takes this way in float32 only (save_pretrained records the dtype of the
    # model it is called on), so the tensors are not read where the copy would be made anyway.
    no_copy = example_inputs is None and (not transformers_model or (precision == "float32" and _all_float32(model)))
    tensors = merged_tensors(model, adapter_name, _dtype(precision), variant_inputs) if no_copy else None
    if tensors is not None and not transformers_model:  # merged weights made one at a time as the file is written
        files = _write_tensors(tensors, path, {**sidecar, "max_output_difference": None}, checksum=checksum)
        return ExportResult(path, "safetensors", precision, name, files, None)
    if tensors is not None:
        # save_pretrained on a shell of the live model (its own config, which save_pretrained edits) with
        # the merged state dict: transformers still decides tied keys, shards and config.
        files = _write_pretrained_merged(_save_shell(model), path, tokenizer or _name_or_path(model), tensors)
        return ExportResult(path, "transformers", precision, name, _with_chat_template(path, files, chat_template),
                            None)
    merged = merged_copy(model, adapter_name, precision, variant_inputs, share_frozen=True)  # written, then dropped
    difference = None
    if example_inputs is not None:
        with _live_inputs(model, variant_inputs):
            live = model_outputs(model, example_inputs)
        difference = max_output_difference(live, model_outputs(merged.float(), example_inputs))
        merged.to(_dtype(precision))
    if transformers_model:
        files = _write_pretrained(merged, path, tokenizer or _name_or_path(model))
        return ExportResult(path, "transformers", precision, name, _with_chat_template(path, files, chat_template),
                            difference)
    files = _write_tensors(merged.state_dict(), path, {**sidecar, "max_output_difference": difference},
                           checksum=checksum)  # fmt: skip
    return ExportResult(path, "safetensors", precision, name, files, difference)


def _live_inputs(model: nn.Module, inputs: Mapping[str, Any] | None):
    """The live model run for comparison with the merged copy: under the merge inputs, given to the
    forward pass the way its variant reads them (e.g. ``task_id`` -> every sample's ``task_ids``)."""
    root = adapted_root(model)
    name = active_adapter(root) if root is not None else None
    if not inputs or name is None:
        return contextlib.nullcontext()
    variant = get_variant(get_adapter_config(root, name).variant)
    return variant_inputs_context(root, **variant.forward_inputs(dict(inputs)))


def _all_float32(model: nn.Module) -> bool:
    return all(t.dtype == torch.float32 for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())


def _save_shell(model: nn.Module) -> nn.Module:
    """A shallow copy of a transformers model to call ``save_pretrained`` on: the same modules and
    tensors (nothing copied), its own config and generation config (``save_pretrained`` writes into
    them), so the live model is not touched."""
    shell = copy.copy(model)
    shell.config = copy.deepcopy(model.config)
    if getattr(model, "generation_config", None) is not None:
        shell.generation_config = copy.deepcopy(model.generation_config)
    return shell


def _write_pretrained(merged: nn.Module, folder: Path, tokenizer: Any) -> tuple[Path, ...]:
    with replace_folder(folder) as stage, _transformers_writes_with(write_safetensors):
        merged.save_pretrained(stage)
        _write_tokenizer(tokenizer, stage)
    return tuple(sorted(p for p in folder.rglob("*") if p.is_file()))


def _with_chat_template(folder: Path, files: tuple[Path, ...], chat_template: str | None) -> tuple[Path, ...]:
    """``files`` plus the folder's ``chat_template.jinja``, written when ``chat_template`` is given."""
    if chat_template is None:
        return files
    target = folder / "chat_template.jinja"
    atomic_write_text(target, chat_template)
    return tuple(sorted(set(files) | {target}))


def _write_tokenizer(tokenizer: Any, stage: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(stage)
    elif tokenizer is not None and Path(tokenizer).is_dir():
        for file_name in TOKENIZER_FILES:
            if (Path(tokenizer) / file_name).is_file():
                shutil.copy2(Path(tokenizer) / file_name, stage / file_name)


class _PlaceholdersNotWritten(RuntimeError):
    """save_pretrained did not hand every merged weight's placeholder to the writer as it was."""


class _SwapPlaceholders:
    """Stands in for ``save_file`` inside ``save_pretrained``: where transformers passes a merged
    weight's placeholder, the writer gets the pending merged weight instead, made as it is written."""

    def __init__(self, pending: dict[int, PendingTensor]) -> None:
        self.pending = pending  # id(placeholder) -> merged weight
        self.swapped: set[int] = set()

    def __call__(self, tensors: Mapping[str, torch.Tensor], filename: str, metadata=None) -> None:
        state: dict[str, torch.Tensor | PendingTensor] = {}
        for key, tensor in tensors.items():
            merged = self.pending.get(id(tensor))
            if merged is not None:
                self.swapped.add(id(tensor))
            state[key] = merged if merged is not None else tensor
        write_safetensors(state, filename, metadata)


def _write_pretrained_merged(
    shell: nn.Module, folder: Path, tokenizer: Any, tensors: Mapping[str, torch.Tensor | PendingTensor]
) -> tuple[Path, ...]:
    """``save_pretrained`` of ``tensors`` (merged weights pending) through ``shell``.

    transformers decides from the state dict which keys to keep (tied weights, by shared storage) and
    how to shard, without reading the values, so each merged weight goes in as a placeholder of its
    shape that owns no memory yet (``torch.empty``: never touched, never committed), and the writer
    makes the real one when its turn comes -- one merged weight at a time, overlapped with writing.
    Should transformers change a placeholder on the way (a weight conversion) the merged weights are
    made first and it writes them itself.
    """
    placeholders = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in tensors.items() if isinstance(v, PendingTensor)}
    swap = _SwapPlaceholders({id(placeholders[k]): tensors[k] for k in placeholders})
    try:
        with replace_folder(folder) as stage, _transformers_writes_with(swap) as hooked:
            if not hooked:
                raise _PlaceholdersNotWritten("transformers writes its weight files itself")
            shell.save_pretrained(stage, state_dict={k: placeholders.get(k, v) for k, v in tensors.items()})
            if swap.swapped != swap.pending.keys():
                raise _PlaceholdersNotWritten("a merged weight did not reach the writer as it was given")
            _write_tokenizer(tokenizer, stage)
    except _PlaceholdersNotWritten:
        state = {k: v.make() if isinstance(v, PendingTensor) else v for k, v in tensors.items()}
        with replace_folder(folder) as stage, _transformers_writes_with(write_safetensors):
            shell.save_pretrained(stage, state_dict=state)
            _write_tokenizer(tokenizer, stage)
    return tuple(sorted(p for p in folder.rglob("*") if p.is_file()))


@contextlib.contextmanager
def _transformers_writes_with(writer: Callable[..., Any]):
    """Have ``save_pretrained`` write its weight files with ``writer`` (same signature and bytes as
    ``safetensors.torch.save_file``, see :mod:`.safetensors_writer`) instead: transformers keeps its
    own choices -- which keys, tied weights, shards, metadata -- and the write is one pass with the
    writeback overlapped.  Yields whether the writer is in place: where transformers no longer names
    ``safe_save_file``, it writes as usual."""
    try:
        from transformers import modeling_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield False
        return
    original = getattr(modeling_utils, "safe_save_file", None)
    if original is None:
        yield False
        return
    modeling_utils.safe_save_file = lambda tensors, filename, metadata=None: writer(tensors, filename, metadata)
    try:
        yield True
    finally:
        modeling_utils.safe_save_file = original


def _write_tensors(
    state: Mapping[str, torch.Tensor | PendingTensor], path: Path, sidecar: dict, *, checksum: bool
) -> tuple[Path, ...]:
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor | PendingTensor] = {}
    for key, tensor in state.items():
        if isinstance(tensor, torch.Tensor):
            # Tied weights (and views) share storage, which safetensors refuses: later ones get their own copy.
            storage = tensor.untyped_storage().data_ptr()
            tensor = tensor.detach().clone() if storage in seen else tensor.detach()
            seen.add(storage)
        tensors[key] = tensor
    digest = write_safetensors(tensors, path, {"format": "pt"}, checksum=checksum)  # atomic, durable
    sidecar_path = sidecar_path_for(path)
    atomic_write_json(sidecar_path, {**sidecar, "weights_file": path.name, **({"sha256": digest} if digest else {})})
    return path, sidecar_path


def sidecar_path_for(weights: str | Path) -> Path:
    """The JSON sidecar beside a merged ``.safetensors`` export."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".export.json")


def verify_export(
    exported: ExportResult | str | Path,
    model: nn.Module,
    example_inputs: Any,
    *,
    build: Callable[[], nn.Module] | None = None,
    variant_inputs: Mapping[str, Any] | None = None,
) -> float:
    """Reload an export, run ``example_inputs`` through it and through the live ``model``, and
    return the largest output difference.

    A ``save_pretrained`` folder is reopened with the live model's class; a safetensors file is
    loaded with ``strict=True`` into ``build()`` or, by default, into a copy of the live model
    with its adapters removed (the original architecture).  ``variant_inputs`` are the merge inputs
    the export was made with (as for :func:`export_merged`); the live model runs under them.
    """
    path = exported.path if isinstance(exported, ExportResult) else Path(exported)
    if path.is_dir() and (path / "config.json").is_file():
        reloaded = type(model).from_pretrained(path)
    else:
        if path.is_dir():
            path = path / "model.safetensors"
        reloaded = build() if build is not None else adapter_free_copy(model)
        reloaded.load_state_dict(load_safetensors(path), strict=True)
    with _live_inputs(model, variant_inputs):
        live = model_outputs(model, example_inputs)
    return max_output_difference(live, model_outputs(reloaded.float(), example_inputs))


def record_verification(exported: ExportResult | str | Path, difference: float) -> Path | None:
    """Store ``difference`` (what :func:`verify_export` measured on the reloaded file) as the sidecar's
    ``max_output_difference``, rewriting the sidecar atomically; returns its path.

    :func:`export_merged` without example inputs writes ``null`` there (it ran nothing); a check made
    afterwards belongs in the file that travels with the weights.  A ``save_pretrained`` folder has no
    sidecar: None, nothing written.
    """
    path = exported.path if isinstance(exported, ExportResult) else Path(exported)
    if path.is_dir():
        path = path / "model.safetensors"
    sidecar_path = sidecar_path_for(path)
    if not sidecar_path.is_file():
        return None
    sidecar = read_sidecar(path)
    sidecar["max_output_difference"] = float(difference)
    atomic_write_json(sidecar_path, sidecar)
    return sidecar_path


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISIONS[precision]


def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _name_or_path(model: nn.Module) -> str | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name if name and Path(name).is_dir() else None


def read_sidecar(weights: str | Path) -> dict[str, Any]:
    """The sidecar of a merged safetensors export."""
    return json.loads(sidecar_path_for(weights).read_text(encoding="utf-8"))


__all__ = [
    "PRECISIONS",
    "ExportResult",
    "export_merged",
    "is_transformers_model",
    "merged_copy",
    "read_sidecar",
    "record_verification",
    "sidecar_path_for",
    "verify_export",
]
