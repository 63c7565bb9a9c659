"""Saving and loading adapters in PEFT's on-disk format, plus the studio's own metadata.

A saved adapter is a folder (``folder`` for ``"default"``, ``folder/<name>`` for any
other adapter, as PEFT does) with:

* ``adapter_model.safetensors`` — the tensors under PEFT's keys (see :mod:`.peft_lora_format`),
  contiguous, unshared, metadata ``{"format": "pt"}``;
* ``adapter_config.json`` — a minimal PEFT ``LoraConfig`` that older PEFT versions read too;
* ``lora_studio_adapter.json`` — what PEFT has no field for: our full config (variant,
  target spec), a training-run summary, and a fingerprint of the base model, so loading
  can warn when an adapter meets a different base.  PEFT never opens it.

All three are written through :func:`.atomic_files.staged_folder`: a failure mid-save
leaves the previous adapter intact.

**PiSSA** (the variant ``pissa``).  Its factors are only right on top of the residual base
PiSSA left behind.  Given ``original_base`` (the base as it was before attaching),
:func:`save_adapter` writes the equivalent plain LoRA adapter of rank 2r for the *original*
base, as PEFT's ``path_initial_model_for_weight_conversion`` does
(:func:`lora_studio.core.variants.pissa.convert_pissa`); without it, the PiSSA adapter itself,
which loading puts back by re-running PiSSA's deterministic SVD on the base it is given, as PEFT
does for a folder saved with ``init_lora_weights="pissa"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapter.config import LoraConfig
from ..adapter.lifecycle import (
    adapter_layers,
    adapter_state,
    attach,
    delete_adapter,
    get_adapter_config,
    set_active_adapter,
)
from ..layers import iter_logical_modules, wrapper_for
from ..layers.behaviour import all_finite
from ..variants import available_variants, get_variant
from ..variants.pissa import OriginalBase, convert_pissa
from .atomic_files import atomic_write_text, staged_folder
from .peft_lora_format import (
    PEFT_PREFIX,
    adapter_tensors,
    factor_paths,
    lora_config_from_peft,
    peft_compatibility_notes,
    peft_config_dict,
    upgrade_studio_mha_keys,
)
from .peft_lora_keys import check_peft_lora_keys, plain_lora_tensors
from .peft_lycoris_format import (
    handles_peft_type,
    handles_variant,
    lycoris_compatibility_notes,
    lycoris_config_from_peft,
    lycoris_factor_paths,
    lycoris_peft_config_dict,
)
from .peft_olora import olora_as_plain_lora
from .safe_loading import load_legacy_weights, load_safetensors, read_json_object, read_safetensors_header

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
STUDIO_METADATA_NAME = "lora_studio_adapter.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # the run's chat template, beside an adapter (transformers' own file name)
STUDIO_FORMAT_VERSION = 1


class AdapterMismatchError(ValueError):
    """The adapter on disk does not fit this model; the model was left exactly as it was."""


def adapter_folder(folder: str | Path, adapter_name: str = "default") -> Path:
    """Where ``adapter_name`` lives below ``folder`` (PEFT's rule: a sub-folder unless ``"default"``)."""
    return Path(folder) if adapter_name == "default" else Path(folder) / adapter_name


# -- saving ------------------------------------------------------------------------------------------
def write_chat_template(folder: str | Path, template: str) -> Path:
    """Write the chat template a run's data was rendered with as ``chat_template.jinja`` in ``folder``.

    Beside an adapter it is the file transformers reads as a tokenizer folder's template (and what
    PEFT users load with ``tokenizer.chat_template = Path(...).read_text()``), so prompts are rendered
    the way training rendered them.
    """
    path = Path(folder) / CHAT_TEMPLATE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, template)
    return path


def read_chat_template(folder: str | Path) -> str | None:
    """The ``chat_template.jinja`` saved in ``folder`` (an adapter or run folder), or None when there is none."""
    path = Path(folder) / CHAT_TEMPLATE_NAME
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as UTF-8 text ({exc}); delete it or save it as UTF-8") from None


def apply_saved_chat_template(tokenizer: Any, *folders: str | Path) -> str | None:
    """Give ``tokenizer`` the chat template saved in the first of ``folders`` that has one (an adapter's, then
    its run's); return it (None: none saved, the tokenizer is left as it is)."""
    for folder in folders:
        template = read_chat_template(folder)
        if template is not None:
            if tokenizer is not None:
                tokenizer.chat_template = template
            return template
    return None


def save_adapter(
    model: nn.Module,
    folder: str | Path,
    adapter_name: str = "default",
    *,
    run_summary: dict[str, Any] | None = None,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    original_base: OriginalBase | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write ``adapter_name`` in PEFT's format below ``folder``; return the folder it went to.

    ``run_summary`` (plain JSON data) goes into the studio metadata.  ``task_type`` defaults
    to what the model's class says where that is unambiguous.  ``original_base`` is needed
    only for PiSSA adapters (see the module docstring).  ``chat_template``: the template a run's chat
    data was rendered with, written beside the weights as ``chat_template.jinja`` (in the same atomic
    folder write), so inference renders prompts as training did.
    """
    config = get_adapter_config(model, adapter_name)
    live = adapter_tensors(model, adapter_name)
    ranks = {n: layer.r[adapter_name] for n, layer in adapter_layers(model) if adapter_name in layer.adapter_names}
    alphas = {
        n: layer.lora_alpha[adapter_name] for n, layer in adapter_layers(model) if adapter_name in layer.adapter_names
    }
    tensors = {k: t.detach() for k, t in live.items()}
    r, alpha, converted = config.r, config.alpha, False
    # Without original_base a PiSSA adapter is saved as it is (see the module docstring).
    if config.variant == "pissa" and original_base is not None:
        replaced, ranks, alphas = convert_pissa(model, adapter_name, original_base, {id(t): k for k, t in live.items()},
                                                use_rslora=config.use_rslora)  # fmt: skip
        tensors.update(replaced)
        r, alpha, converted = 2 * config.r, _doubled_alpha(config), True
    saved_variant = "lora" if converted else config.variant
    lycoris = handles_variant(saved_variant)  # LoHa/LoKr: PEFT's LOHA/LOKR formats
    if lycoris:
        notes = lycoris_compatibility_notes(model, adapter_name)
    else:
        notes = peft_compatibility_notes(model, adapter_name, saved_variant)
    for note in notes:
        warnings.warn(f"adapter {adapter_name!r} will not load identically in PEFT: {note}", stacklevel=2)
    name_or_path = base_model_name_or_path or _name_or_path(model)
    task = task_type if task_type is not None else _task_type(model, config)
    if lycoris:
        peft_config = lycoris_peft_config_dict(model, adapter_name, base_model_name_or_path=name_or_path, task_type=task)
    else:
        peft_config = peft_config_dict(
            model,
            adapter_name,
            r=r,
            alpha=alpha,
            ranks=ranks,
            alphas=alphas,
            init_lora_weights="gaussian" if config.init == "gaussian" else True,
            base_model_name_or_path=name_or_path,
            task_type=task,
            variant=saved_variant,
        )
    studio = {
        "format_version": STUDIO_FORMAT_VERSION,
        "adapter_name": adapter_name,
        # converted: a plain LoRA adapter for the original base, whatever PiSSA flavour made it
        "config": config.to_dict()
        | ({"init": "default", "r": r, "alpha": alpha, "variant": "lora", "variant_settings": {}} if converted else {}),
        "variant": saved_variant,
        "converted_from_pissa": converted,
        "layer_ranks": ranks,
        "layer_alphas": alphas,
        "peft_compatible": not notes,
        "peft_notes": notes,
        "run_summary": run_summary or {},
        "base_model": base_fingerprint(model, exclude=ranks),
    }
    if converted:  # the per-layer truth lives in the patterns (our config must rebuild rank 2r exactly)
        studio["config"]["rank_pattern"] = peft_config["rank_pattern"]
        studio["config"]["alpha_pattern"] = peft_config["alpha_pattern"]
    return _write_folder(adapter_folder(folder, adapter_name), tensors, peft_config, studio, chat_template)


def _doubled_alpha(config: LoraConfig) -> float:
    # Same scale at rank 2r: alpha/r needs 2·alpha; alpha/sqrt(r) needs sqrt(2)·alpha (PEFT's rule).
    return config.alpha * (2**0.5 if config.use_rslora else 2)


def _write_folder(out: Path, tensors: dict[str, torch.Tensor], peft_config: dict, studio: dict,
                  chat_template: str | None = None) -> Path:
    from safetensors.torch import save_file

    # Clone every tensor: contiguous, on the CPU, and never sharing storage (safetensors refuses aliases).
    payload = {PEFT_PREFIX + k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    with staged_folder(out) as stage:
        save_file(payload, str(stage / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        (stage / ADAPTER_CONFIG_NAME).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
        (stage / STUDIO_METADATA_NAME).write_text(json.dumps(studio, indent=2, sort_keys=True) + "\n")
        if chat_template is not None:
            (stage / CHAT_TEMPLATE_NAME).write_text(chat_template, encoding="utf-8")
    return out


def _name_or_path(model: nn.Module) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _task_type(model: nn.Module, config: LoraConfig) -> str | None:
    """PEFT's task type where the class name makes it certain; None (PEFT's generic model) otherwise.

    Classification heads only count when they are in ``modules_to_save``: PEFT adds them there
    by itself for these task types, and a head it added that the file lacks would load untrained.
    """
    cls = type(model).__name__
    if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    heads = set(config.modules_to_save)
    if heads & {"classifier", "score"}:
        if cls.endswith("ForSequenceClassification"):
            return "SEQ_CLS"
        if cls.endswith("ForTokenClassification"):
            return "TOKEN_CLS"
    return None


def base_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """A cheap identity of the base model: its class, name, architecture and a sample of its values.

    ``structure`` hashes every base parameter's name, shape and dtype; ``values`` hashes the first
    few values of each parameter -- enough to tell two checkpoints of one architecture apart
    without reading gigabytes.  Both leave out the modules in ``exclude`` (the adapted layers,
    which PiSSA replaces by a residual and QLoRA by a 4-bit copy); the adapter's own shape
    checks cover those.
    """
    structure, values = hashlib.sha256(), hashlib.sha256()
    skipped = tuple(f"{name}." for name in exclude)
    for lm in iter_logical_modules(model):
        for pname, p in lm.module.named_parameters(recurse=False):
            name = f"{lm.name}.{pname}"
            if name.startswith(skipped):
                continue  # an adapted layer may have been rewritten (PiSSA residual, QLoRA's 4-bit base)
            structure.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            if not p.is_meta:
                values.update(p.detach().reshape(-1)[:16].to("cpu", torch.float64).numpy().tobytes())
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name_or_path": _name_or_path(model),
        "structure": structure.hexdigest(),
        "values": values.hexdigest(),
    }


# -- loading ----------------------------------------------------------------------------------------
def read_adapter_configs(folder: Path) -> tuple[dict, dict | None]:
    """(PEFT config, studio metadata or None) of an adapter folder: the one reader of both files.

    A file that is not UTF-8, not JSON or not a JSON object is refused naming it, so no decode
    error without a file name ever reaches a user.
    """
    config_path = folder / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {ADAPTER_CONFIG_NAME}; is it an adapter folder?")
    studio_path = folder / STUDIO_METADATA_NAME
    fix = "save or export the adapter again"
    return (read_json_object(config_path, fix),
            read_json_object(studio_path, fix) if studio_path.is_file() else None)


def read_adapter_folder(folder: str | Path) -> tuple[dict, dict | None, dict[str, torch.Tensor]]:
    """(PEFT config, studio metadata or None, tensors with ``base_model.model.`` removed) of a folder."""
    folder = Path(folder)
    peft_config, studio = read_adapter_configs(folder)
    if (folder / ADAPTER_WEIGHTS_NAME).is_file():
        raw = load_safetensors(folder / ADAPTER_WEIGHTS_NAME)
    elif (folder / LEGACY_WEIGHTS_NAME).is_file():
        raw = load_legacy_weights(folder / LEGACY_WEIGHTS_NAME)
    else:
        raise FileNotFoundError(f"{folder} holds neither {ADAPTER_WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME}")
    # Our folders from before issue 16 keyed MultiheadAttention factors in our own scheme: read them as PEFT's.
    tensors = upgrade_studio_mha_keys({k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()})
    if _is_peft_lora(peft_config, studio):  # VeLoRA's and BD-LoRA's tensors as the plain LoRA they are
        tensors = plain_lora_tensors(peft_config, tensors)
    return peft_config, studio, tensors


def _is_peft_lora(peft_config: dict, studio: dict | None) -> bool:
    """A LoRA folder PEFT wrote (not ours, not LoHa/LoKr): its config keys are checked by name."""
    return studio is None and peft_config.get("peft_type", "LORA") == "LORA"


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Attach the adapter saved in ``folder`` (ours or PEFT's) as ``adapter_name``, load its weights,
    make it active, and return ``model``.

    A plain model gets the adapter the folder describes; a model with adapters gets one more.
    For a non-default name, a sub-folder of ``folder`` named after it is used when there is one
    (the layout :func:`save_adapter` and PEFT write).  When the
    files do not fit the model, :class:`AdapterMismatchError` names the first offending key with
    both shapes, and the model is left exactly as it was.
    """
    folder = Path(folder)
    if adapter_name != "default" and (folder / adapter_name / ADAPTER_CONFIG_NAME).is_file():
        folder = folder / adapter_name  # where save_adapter (and PEFT) put a non-default adapter
    peft_config, studio, tensors = read_adapter_folder(folder)
    state = adapter_state(model)
    if state is not None and adapter_name in state.configs:
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; choose another name")
    if any(layer.merged for _, layer in adapter_layers(model)):
        raise ValueError("unmerge the model's adapters before loading another one (merged weights would change)")
    if _is_peft_lora(peft_config, studio):
        check_peft_lora_keys(peft_config, model)  # a refused option by name, before any shape says "another base?"
        peft_config, tensors = olora_as_plain_lora(peft_config, tensors, model)  # the base is never rewritten
    _check_modules_exist(model, tensors)
    _check_factor_shapes(model, tensors, studio)  # before anything changes: the common case needs no undo
    if studio is not None:
        if not isinstance(studio.get("config"), dict):
            raise ValueError(f"{folder / STUDIO_METADATA_NAME} has no 'config' table, so the adapter's settings are "
                             "unknown; save the adapter again, or delete that file to load it as a PEFT adapter")
        config = LoraConfig.from_dict(studio["config"])
        note = _other_base_note(model, studio, tensors, folder)
        if note:
            warnings.warn(note, stacklevel=2)
    elif handles_peft_type(peft_config.get("peft_type")):
        config = lycoris_config_from_peft(peft_config, tensors, model)
    else:
        config = lora_config_from_peft(peft_config, tensors, model)
    _attach_and_fill(model, config, adapter_name, tensors, source=folder)
    return model


def _adapted_paths(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Module path -> one of its factor keys, for LoRA and for PEFT's LoHa/LoKr tensors."""
    return factor_paths(tensors) | lycoris_factor_paths(tensors)


def _check_modules_exist(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    names = {lm.name for lm in iter_logical_modules(model)}
    for path, key in _adapted_paths(tensors).items():
        if path not in names:
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{key}: file shape {list(tensors[key].shape)}, but this model has no module "
                f"{path!r} (model shape: none). Was the adapter trained on another base model?"
            )


def _other_base_note(model: nn.Module, studio: dict, tensors: dict, folder: Path) -> str | None:
    """A warning when our metadata's fingerprint says the adapter was saved on another base, else None."""
    saved = studio.get("base_model") or {}
    adapted = studio.get("layer_ranks") or _adapted_paths(tensors)  # the layers the saved hash left out
    here = base_fingerprint(model, exclude=adapted)
    for part in ("structure", "values"):
        if saved.get(part) and saved[part] != here[part]:
            what = "architecture (or dtype)" if part == "structure" else "weights"
            return (
                f"{folder}: this adapter was saved on a base model with different {what} "
                f"({saved.get('class')}, {saved.get('name_or_path')!r}); its outputs may not be what was trained"
            )
    return None


# Variants whose files hold PEFT's plain LoRA factors (A: r x inputs, B: outputs x r).
_PLAIN_FACTOR_VARIANTS = {"lora", "lora_plus", "dora", "pissa", "qlora"}
# Layer types whose factor sizes follow from the base weight alone (PEFT's layout for each).
_SHAPE_CHECKED = {"Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D"}
# PEFT's LoRA keys for a one-weight layer: (A key suffix, B key suffix).
_LORA_KEY_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))


def _check_factor_shapes(model: nn.Module, shapes: dict[str, Any], studio: dict | None) -> None:
    """Refuse LoRA factors whose sizes do not fit their layer (``shapes``: key -> tensor or shape),
    reading the model only.  What this cannot judge (variants that store more than PEFT's two plain
    factors, several adapted weights, grouped convolutions, LoHa/LoKr keys) is left to the full check
    after attaching, which undoes itself."""
    variant = (studio or {}).get("variant") or "lora"
    if variant not in _PLAIN_FACTOR_VARIANTS:
        return
    logical = {lm.name: lm for lm in iter_logical_modules(model)}
    for path in factor_paths(shapes):
        if path not in logical:
            continue  # _check_modules_exist names it
        base = logical[path].module
        wrapper_cls, reason = wrapper_for(base, inside_attention=logical[path].inside_attention)
        if wrapper_cls is None:
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{path}: this model's {path!r} ({type(base).__name__}) cannot carry LoRA: {reason}. "
                "Was the adapter trained on another base model?"
            )
        if type(base).__name__ not in _SHAPE_CHECKED:
            continue
        slots = wrapper_cls(base).weight_slots()  # a throw-away wrapper: it only reads the layer
        if list(slots) != ["weight"] or not slots["weight"].param.is_floating_point():
            continue  # several adapted weights, or a packed 4-bit base: the check after attaching judges
        rows, cols = _matrix_shape(slots["weight"])
        for a_suffix, b_suffix in _LORA_KEY_PAIRS:
            a_key, b_key = path + a_suffix, path + b_suffix
            if a_key not in shapes or b_key not in shapes:
                continue
            a_shape, b_shape = _shape(shapes[a_key]), _shape(shapes[b_key])
            r = a_shape[0]
            conv = type(base).__name__ in ("Conv1d", "Conv2d", "Conv3d")
            if conv and getattr(base, "groups", 1) != 1:
                continue  # grouped: A's sizes depend on how the wrapper builds it
            kernel = tuple(base.weight.shape[2:]) if conv else ()
            want_a = (r, *base.weight.shape[1:]) if conv else (r, cols)
            want_b = (rows, r, *(1 for _ in kernel))
            for key, have, want in ((a_key, a_shape, want_a), (b_key, b_shape, want_b)):
                if tuple(have) != tuple(want):
                    raise AdapterMismatchError(
                        f"{PEFT_PREFIX}{key}: file shape {list(have)} does not match model shape {list(want)}. "
                        "Was the adapter trained on another base model or with another rank?"
                    )


def _matrix_shape(slot: Any) -> tuple[int, int]:
    """(rows, columns) of the matrix ``B @ A`` stands for, from the weight's shape alone."""
    shape = tuple(slot.param.shape)
    if slot.transposed:
        return shape[1], shape[0]
    return shape[0], math.prod(shape[1:])


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _attach_and_fill(model: nn.Module, config: LoraConfig, adapter_name: str, tensors: dict, source: Path) -> None:
    """Attach, check every tensor against the model, then copy; undo on any mismatch."""
    previous_active = adapter_state(model).active if adapter_state(model) else None
    grad_flags = {id(p): p.requires_grad for p in model.parameters()}
    # A variant whose initialisation rewrites the base (PiSSA) changes it in attach: keep what an undo restores.
    rewritten = get_variant(config.variant).rewrites_base_at_init
    originals = {n: p.detach().clone() for n, p in model.named_parameters()} if rewritten else {}
    with torch.random.fork_rng(devices=[]):  # loading must not move the caller's random stream
        attach(model, config, adapter_name)  # PiSSA re-runs its SVD here, as PEFT does
    try:
        expected = adapter_tensors(model, adapter_name)
        base_extra = _check_tensors(model, expected, tensors)
        for key, target in {**expected, **base_extra}.items():
            _check_values(key, tensors[key], target, source)
    except Exception:
        delete_adapter(model, adapter_name)
        if adapter_state(model) is not None:
            set_active_adapter(model, previous_active)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in originals:
                    p.copy_(originals[n])
        for p in model.parameters():
            p.requires_grad_(grad_flags.get(id(p), p.requires_grad))
        raise
    with torch.no_grad():
        for key, target in {**expected, **base_extra}.items():
            target.copy_(tensors[key].to(target.dtype))


def _check_tensors(model: nn.Module, expected: dict[str, torch.Tensor], tensors: dict) -> dict[str, torch.Tensor]:
    """Raise on the first missing, unexpected or mis-shaped key; return the extra base tensors to load."""
    for key, target in expected.items():
        if key not in tensors:
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{key}: missing from the file (model shape {list(target.shape)}, file shape: none)"
            )
        if tuple(tensors[key].shape) != tuple(target.shape):
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{key}: file shape {list(tensors[key].shape)} does not match model shape "
                f"{list(target.shape)}. Was the adapter trained on another base model or with another rank?"
            )
    # PEFT also saves whole base tensors in some cases (a resized embedding table, lm_head): load those as PEFT does.
    base = model.state_dict(keep_vars=True)
    extra = {}
    for key in tensors:
        if key in expected or _copy_alias(key) in expected:
            continue
        if key not in base:
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{key}: in the file (shape {list(tensors[key].shape)}) but this model has no such "
                "tensor (model shape: none)"
            )
        if tuple(tensors[key].shape) != tuple(base[key].shape):
            raise AdapterMismatchError(
                f"{PEFT_PREFIX}{key}: file shape {list(tensors[key].shape)} does not match model shape "
                f"{list(base[key].shape)}"
            )
        extra[key] = base[key]
    return extra


def _check_values(key: str, value: torch.Tensor, target: torch.Tensor, source: Path) -> None:
    """Refuse a tensor whose values cannot be what the model holds: integers or booleans for a float
    weight (a header that lies about the dtype would copy bit patterns as numbers), or NaN/Inf."""
    where = f" in {source}"
    if target.is_floating_point() and not value.is_floating_point():
        raise AdapterMismatchError(
            f"{PEFT_PREFIX}{key}{where}: stored as {str(value.dtype).removeprefix('torch.')}, but the model's "
            f"weight is {str(target.dtype).removeprefix('torch.')}; the file is damaged or was not written as an "
            "adapter. Save the adapter again from its run."
        )
    if value.is_floating_point() and not all_finite(value):
        raise AdapterMismatchError(
            f"{PEFT_PREFIX}{key}{where}: holds NaN or Inf, so every output would too; the run that wrote it "
            "diverged. Use an earlier checkpoint, or train again with a lower training.lr."
        )


def _copy_alias(key: str) -> str:
    """PEFT with ``bias="all"`` also saves a modules-to-save copy's bias as ``<module>.modules_to_save.bias``:
    the same tensor as ``<module>.bias``, which is what we load."""
    root, sep, rest = key.partition(".modules_to_save.")
    return f"{root}.{rest}" if sep else key


# -- reading a folder without a model, and checking it against one ---------------------------------
@dataclass(frozen=True)
class AdapterFacts:
    """What an adapter folder holds, read from its files alone (no model, no tensor data loaded)."""

    folder: Path
    name: str  # the name it was saved under (ours), else the folder's name
    variant: str  # our variant name: "lora", "dora", "loha", "lokr", ...
    peft_type: str  # "LORA", "LOHA", "LOKR", ...
    rank: int  # the common rank (``ranks`` has every layer's)
    alpha: float
    targets: tuple[str, ...]  # the adapted modules' paths
    ranks: dict[str, int] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()  # whole modules it trains a copy of (e.g. a classifier head)
    size_bytes: int = 0  # the weights file
    parameters: int | None = None  # tensor entries in the file (None for a legacy pickle file)
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    ours: bool = False  # saved by LoRA Studio (it has lora_studio_adapter.json)
    run_summary: dict[str, Any] = field(default_factory=dict)  # ours: step, best loss, label names
    run_dir: Path | None = None  # the run folder it sits in (a parent holding run.toml), when there is one
    peft_compatible: bool = True  # ours: PEFT loads it with the same outputs
    peft_notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (paths as strings)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["folder"] = str(self.folder)
        data["run_dir"] = str(self.run_dir) if self.run_dir else None
        data["targets"] = list(self.targets)
        data["modules_to_save"] = list(self.modules_to_save)
        data["peft_notes"] = list(self.peft_notes)
        return data


def read_adapter_facts(folder: str | Path) -> AdapterFacts:
    """The facts of the adapter in ``folder`` (ours or PEFT's) from its config and the weights file's
    header.  ``FileNotFoundError`` / ``ValueError`` say what is missing or unreadable."""
    folder = Path(folder)
    peft_config, studio = read_adapter_configs(folder)
    weights = folder / ADAPTER_WEIGHTS_NAME
    if weights.is_file():
        header = read_safetensors_header(weights)
        shapes = {k.removeprefix(PEFT_PREFIX): tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        parameters: int | None = sum(math.prod(s) for s in shapes.values())
    elif (folder / LEGACY_WEIGHTS_NAME).is_file():
        weights = folder / LEGACY_WEIGHTS_NAME
        tensors = load_legacy_weights(weights)
        shapes = {k.removeprefix(PEFT_PREFIX): tuple(t.shape) for k, t in tensors.items()}
        parameters = None
    else:
        raise FileNotFoundError(f"{folder} holds neither {ADAPTER_WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME}")
    peft_type = str(peft_config.get("peft_type", "LORA"))
    paths = factor_paths(shapes) | lycoris_factor_paths(shapes)
    if studio is not None:
        config = studio.get("config") or {}
        ranks = {k: int(v) for k, v in (studio.get("layer_ranks") or {}).items()}
        summary = dict(studio.get("run_summary") or {})
        run_dir = folder.parent if (folder.parent / "run.toml").is_file() else None
        return AdapterFacts(
            folder=folder,
            name=_facts_name(folder, studio.get("adapter_name") or "default", run_dir),
            variant=str(studio.get("variant") or config.get("variant") or "lora"),
            peft_type=peft_type,
            rank=int(config.get("r", peft_config.get("r", 0))),
            alpha=float(config.get("alpha", peft_config.get("lora_alpha", 0))),
            targets=tuple(ranks or paths),
            ranks=ranks,
            modules_to_save=tuple(config.get("modules_to_save") or ()),
            size_bytes=weights.stat().st_size,
            parameters=parameters,
            base_model_name_or_path=peft_config.get("base_model_name_or_path"),
            task_type=peft_config.get("task_type"),
            ours=True,
            run_summary=summary,
            run_dir=run_dir,
            peft_compatible=bool(studio.get("peft_compatible", True)),
            peft_notes=tuple(studio.get("peft_notes") or ()),
        )
    rank = int(peft_config.get("r", 0))
    ranks = {}
    for path, key in factor_paths(shapes).items():  # a LoRA A factor's first dimension is its rank
        ranks[path] = int(shapes[key][0])
    return AdapterFacts(
        folder=folder,
        name=folder.name,
        variant=_variant_of_peft(peft_config),
        peft_type=peft_type,
        rank=rank,
        alpha=float(peft_config.get("lora_alpha", peft_config.get("alpha", rank))),
        targets=tuple(paths),
        ranks=ranks,
        modules_to_save=tuple(peft_config.get("modules_to_save") or ()),
        size_bytes=weights.stat().st_size,
        parameters=parameters,
        base_model_name_or_path=peft_config.get("base_model_name_or_path"),
        task_type=peft_config.get("task_type"),
    )


def _facts_name(folder: Path, saved_name: str, run_dir: Path | None) -> str:
    # A run's adapter is saved as "default" in RUN_DIR/adapter (or best/): the run's folder names it better.
    if saved_name != "default":
        return saved_name
    if run_dir is None:
        return folder.name
    return run_dir.name if folder.name == "adapter" else f"{run_dir.name}-{folder.name}"


def _variant_of_peft(peft_config: dict) -> str:
    """Our variant for a PEFT config: the one whose PEFT type and flags it has (DoRA: use_dora)."""
    peft_type = peft_config.get("peft_type", "LORA")
    flagged = [v for v in available_variants() if v.peft_type == peft_type and v.peft_lora_flags
               and all(peft_config.get(k) == want for k, want in v.peft_lora_flags.items())]  # fmt: skip
    if flagged:
        return flagged[0].name
    plain = [v for v in available_variants() if v.peft_type == peft_type and not v.peft_lora_flags]
    return plain[0].name if plain else str(peft_type).lower()


@dataclass(frozen=True)
class AdapterFit:
    """Whether an adapter folder fits a model: ``problem`` (why it cannot load; None when it can) and
    ``note`` (a warning that does not stop loading, e.g. saved on a base with other weights)."""

    problem: str | None = None
    note: str | None = None

    @property
    def fits(self) -> bool:
        """True when :func:`load_adapter` would load it."""
        return self.problem is None


def check_adapter_fit(model: nn.Module, folder: str | Path) -> AdapterFit:
    """Check the adapter in ``folder`` against ``model`` without changing the model: module names,
    factor shapes, and (ours) the base fingerprint.  What it cannot judge without attaching (LoHa/LoKr
    factor sizes) :func:`load_adapter` still checks, and undoes itself on a mismatch."""
    try:
        peft_config, studio, tensors = read_adapter_folder(folder)
        if _is_peft_lora(peft_config, studio):
            check_peft_lora_keys(peft_config, model)
        _check_modules_exist(model, tensors)
        _check_factor_shapes(model, tensors, studio)
    except (AdapterMismatchError, FileNotFoundError, ValueError) as exc:
        return AdapterFit(problem=str(exc))
    return AdapterFit(note=_other_base_note(model, studio, tensors, Path(folder)) if studio else None)


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "AdapterFacts",
    "AdapterFit",
    "check_adapter_fit",
    "read_adapter_facts",
    "ADAPTER_WEIGHTS_NAME",
    "STUDIO_METADATA_NAME",
    "AdapterMismatchError",
    "adapter_folder",
    "base_fingerprint",
    "load_adapter",
    "read_adapter_folder",
    "save_adapter",
]
