"""PEFT's on-disk adapter format: tensor keys and ``adapter_config.json``, both ways.

Our wrappers are laid out like PEFT's (``base_layer`` inside, factors in dicts
keyed by adapter name), so a tensor's PEFT key is its key in our model's state
dict with the adapter name taken out and ``base_model.model.`` put in front::

    encoder.layer.0.attention.self.query.lora_A.default.weight
      -> base_model.model.encoder.layer.0.attention.self.query.lora_A.weight
    embeddings.word_embeddings.lora_embedding_A.default
      -> base_model.model.embeddings.word_embeddings.lora_embedding_A
    classifier.modules_to_save.default.weight          (a fully trained copy)
      -> base_model.model.classifier.weight

``nn.MultiheadAttention`` is laid out as PEFT's ``lora.MultiheadAttention`` lays it out: the
in-projection's factors on the attention module itself, the out-projection's on the LoRA
``Linear`` PEFT nests under ``base_layer.out_proj`` (the out-projection's bias, when trained,
under that Linear's ``base_layer``)::

    attn.lora_A.default.in_proj_weight      -> base_model.model.attn.lora_A.weight   (r x E)
    attn.lora_B.default.in_proj_weight      -> base_model.model.attn.lora_B.weight   (3E x r)
    attn.lora_A.default.out_proj_weight     -> base_model.model.attn.base_layer.out_proj.lora_A.weight
    attn.lora_B.default.out_proj_weight     -> base_model.model.attn.base_layer.out_proj.lora_B.weight
    attn.base_layer.out_proj.bias (trained) -> base_model.model.attn.base_layer.out_proj.base_layer.bias

Our older folders (LoRA Studio before issue 16) keyed them ``attn.lora_A.in_proj_weight``;
:func:`upgrade_studio_mha_keys` renames those on reading, so they still load.  Both adapt
``W + s·B·A`` per weight, which is what PEFT's ``get_delta_weight`` computes; PEFT 0.21.2's
``MultiheadAttention`` applies the out-projection's delta twice in ``merge()``, and its forward
(which merges around the call) does too (PEFT PR #3774 fixes both), so with those versions only
the in-projection's update matches; :data:`MHA_OUT_PROJ_NOTE` says so on save and load.
RNN cells, also adapted in weight space, have no PEFT form; their keys follow the plain rule
(``cell.lora_A.weight_ih``) and only LoRA Studio reads them back.

The config written for PEFT names the adapted layers explicitly (never
``all-linear`` or a regex whose meaning PEFT versions might read differently),
and gives explicit per-layer ranks and alphas only where a layer differs from
``r``/``lora_alpha``, so what PEFT rebuilds is exactly what was attached.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..adapter.config import LoraConfig, pattern_matches
from ..adapter.lifecycle import get_adapter_config
from ..layers import (
    AdapterLayer,
    ConvLora,
    EmbeddingLora,
    LinearLora,
    ModulesToSave,
    adapter_layers,
    iter_logical_modules,
)
from ..variants import available_variants, get_variant
from .peft_lora_keys import check_peft_lora_keys

PEFT_PREFIX = "base_model.model."
STUDIO_ONLY_PEFT_TYPE = "LORA_STUDIO_VARIANT"  # not a PEFT type: PEFT refuses such a folder by name
# PEFT nests an attention module's out-projection LoRA under "<attn>.base_layer.out_proj": that
# factor belongs to the attention module, so the optional group folds it into <attn>'s path.
_FACTOR_KEY = re.compile(
    r"^(?P<path>.+?)(?P<nested>\.base_layer\.out_proj)?\.(?P<attr>lora_A|lora_embedding_A)(?:\.(?P<rest>.+))?$"
)
# Where PEFT keeps a MultiheadAttention's factors, by our ParameterDict key (see the module docstring).
_MHA_FACTOR_PLACES = {"in_proj_weight": "", "out_proj_weight": "base_layer.out_proj."}
_MHA_OUT_BIAS = ("base_layer.out_proj.bias", "base_layer.out_proj.base_layer.bias")  # (ours, PEFT's)
_STUDIO_MHA_KEY = re.compile(r"^(?P<path>.+)\.(?P<attr>lora_A|lora_B)\.(?P<weight>in_proj_weight|out_proj_weight)$")
MHA_OUT_PROJ_NOTE = (
    "PEFT up to 0.21.2 applies a MultiheadAttention's out_proj update twice (W + 2·s·B·A, in its forward and "
    "in merge; its fix is PEFT PR #3774); LoRA Studio applies W + s·B·A, as PEFT's get_delta_weight and that fix "
    "do, so outputs agree with PEFT only where the fix is in"
)
# PEFT init values that change the base weights in a way we cannot reproduce exactly (PEFT re-runs
# them when it loads the folder: LoftQ's quantisation on the base, CorDA from data). OLoRA's QR is
# reproduced, by loading the folder as the plain LoRA it equals (peft_olora.py), never by this reader.
_UNSUPPORTED_INITS = ("olora", "loftq", "corda")
# PEFT init values whose loading leaves the base as it is: the file's factors are then plain LoRA
# (EVA and LoRA-GA shape only the first factors; orthogonal is random; MiCA freezes B, which is saved).
_PLAIN_LOADING_INITS = ("eva", "orthogonal", "lora_ga", "mica")


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The live tensors that make up ``adapter_name``, by PEFT key (without ``base_model.model.``).

    Returned tensors are the model's own parameters: read them to save, ``copy_`` into them
    to load.  Biases are included as ``bias`` asks (PEFT's rule); modules-to-save copies
    under their plain paths.
    """
    tensors: dict[str, torch.Tensor] = {}
    saved_roots: list[str] = []
    for path, module in model.named_modules():
        if isinstance(module, AdapterLayer) and adapter_name in module.adapter_names:
            for attr in module.factor_attributes:
                container = getattr(module, attr)
                if adapter_name not in container:  # a variant's extra dict (e.g. DoRA's) may skip this adapter
                    continue
                entry = container[adapter_name]
                if isinstance(entry, nn.Parameter):
                    tensors[f"{path}.{attr}"] = entry
                else:
                    for name, tensor in entry.state_dict(keep_vars=True).items():
                        tensors[_factor_key(module, path, attr, name)] = tensor
        elif isinstance(module, ModulesToSave) and adapter_name in module.adapter_names:
            saved_roots.append(path)
            for name, tensor in module.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                tensors[f"{path}.{name}"] = tensor
    tensors.update(_bias_tensors(model, adapter_name, saved_roots))
    return tensors


def is_attention_layer(layer: nn.Module) -> bool:
    """True for our wrapper of an ``nn.MultiheadAttention`` (PEFT's nested out_proj layout applies)."""
    return isinstance(layer, AdapterLayer) and isinstance(layer.base_layer, nn.MultiheadAttention)


def _factor_key(layer: AdapterLayer, path: str, attr: str, name: str) -> str:
    """PEFT's key (without the prefix) of one factor stored as ``layer.<attr>[adapter][name]``."""
    if attr in ("lora_A", "lora_B") and is_attention_layer(layer) and name in _MHA_FACTOR_PLACES:
        return f"{path}.{_MHA_FACTOR_PLACES[name]}{attr}.weight"
    return f"{path}.{attr}.{name}"


def upgrade_studio_mha_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with our pre-issue-16 MultiheadAttention keys (``attn.lora_A.in_proj_weight``) renamed
    to PEFT's layout, which is what :func:`adapter_tensors` expects; other keys are kept as they are.

    Those names exist only on an attention module (an RNN cell's are ``weight_ih``/``weight_hh``), and
    a file never holds both layouts for one module, so the rename needs no model.
    """
    renamed = {}
    for key, tensor in tensors.items():
        m = _STUDIO_MHA_KEY.match(key)
        if m:
            key = f"{m['path']}.{_MHA_FACTOR_PLACES[m['weight']]}{m['attr']}.weight"
        renamed[key] = tensor
    return renamed


def _bias_tensors(model: nn.Module, adapter_name: str, saved_roots: list[str]) -> dict[str, torch.Tensor]:
    bias = get_adapter_config(model, adapter_name).bias
    if bias == "none":
        return {}
    attention = [path for path, layer in adapter_layers(model) if is_attention_layer(layer)]
    if bias == "lora_only":
        found = {
            f"{path}.base_layer.bias": layer.base_layer.bias
            for path, layer in adapter_layers(model)
            # a parameter: an RNN cell's ``bias`` is its constructor's flag (a bool), its biases bias_ih/bias_hh
            if adapter_name in layer.adapter_names and isinstance(getattr(layer.base_layer, "bias", None), nn.Parameter)
        }
        for path, layer in adapter_layers(model):  # lora_only trains an attention's out_proj bias, as PEFT does
            out_bias = getattr(layer.base_layer.out_proj, "bias", None) if is_attention_layer(layer) else None
            if adapter_name in layer.adapter_names and out_bias is not None:
                found[f"{path}.{_MHA_OUT_BIAS[0]}"] = out_bias
    else:
        found = {
            name: p
            for name, p in model.named_parameters()
            if name.rsplit(".", 1)[-1] == "bias" and not any(name.startswith(root + ".") for root in saved_roots)
        }
    ours, peft_name = _MHA_OUT_BIAS  # PEFT keeps the out_proj bias under its nested Linear's base_layer
    return {
        (f"{key[: -len(ours)]}{peft_name}" if any(key == f"{p}.{ours}" for p in attention) else key): t
        for key, t in found.items()
    }


# -- names ----------------------------------------------------------------------------------------
def _overmatched(name: str, all_names: Iterable[str]) -> bool:
    """True when a suffix match on ``name`` would also catch another module (``x.name``)."""
    return any(other != name and other.endswith("." + name) for other in all_names)


def exact_targets(names: list[str], all_names: list[str]) -> list[str] | str:
    """``names`` as a target spec that PEFT and our matcher both read as exactly these modules.

    A plain list is the readable form (both match an entry by equality or dotted suffix); when a
    suffix would catch a deeper module too, an anchored regex of the names is used instead.
    """
    if not any(_overmatched(n, all_names) for n in names):
        return list(names)
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def exact_pattern_key(name: str, all_names: list[str]) -> str:
    """A rank/alpha pattern key matching only module ``name`` (PEFT: ``(.*\\.)?(key)$``)."""
    key = re.escape(name)
    # '^' stops the optional '(.*\.)?' prefix from letting the key match deeper modules too.
    return "^" + key if _overmatched(name, all_names) else key


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


# -- our config -> PEFT's -------------------------------------------------------------------------
def peft_config_dict(
    model: nn.Module,
    adapter_name: str,
    *,
    r: int,
    alpha: float,
    ranks: dict[str, int],
    alphas: dict[str, float],
    init_lora_weights: bool | str,
    base_model_name_or_path: str | None,
    task_type: str | None,
    variant: str | None = None,
) -> dict:
    """The minimal ``adapter_config.json`` PEFT (old and new) rebuilds this adapter from.

    ``ranks``/``alphas`` give every adapted layer's real rank and alpha (they may differ from
    the config's when an adapter was converted or combined); ``variant`` overrides the config's
    (a converted PiSSA adapter is plain LoRA).
    """
    config = get_adapter_config(model, adapter_name)
    all_names = [lm.name for lm in iter_logical_modules(model)]
    names = list(ranks)
    conv1d = [n for n, layer in adapter_layers(model) if n in ranks and getattr(layer, "fan_in_fan_out", False)]
    # A variant PEFT has no LoRA form for gets a type PEFT refuses by name, rather than a LoRA
    # config PEFT would load silently as something else; the studio reads its own metadata file.
    variant = variant or config.variant
    peft_type = "LORA" if get_variant(variant).peft_type == "LORA" else STUDIO_ONLY_PEFT_TYPE
    result = {
        "peft_type": peft_type,
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": config.dropout,
        "target_modules": exact_targets(names, all_names),
        "rank_pattern": {exact_pattern_key(n, all_names): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {exact_pattern_key(n, all_names): _number(v) for n, v in alphas.items() if v != alpha},
        "use_rslora": config.use_rslora,
        "bias": config.bias,
        "modules_to_save": list(config.modules_to_save) or None,
        "init_lora_weights": init_lora_weights,
        # PEFT fixes this per layer anyway (with a warning); stating it avoids the warning for GPT-2.
        "fan_in_fan_out": bool(conv1d) and len(conv1d) == len(names),
        "inference_mode": True,
    }
    result.update(get_variant(variant).peft_lora_flags)  # e.g. DoRA's use_dora
    if peft_type == STUDIO_ONLY_PEFT_TYPE:
        result["lora_studio_variant"] = variant
    return result


def peft_compatibility_notes(model: nn.Module, adapter_name: str, variant: str | None = None) -> list[str]:
    """Why PEFT would not rebuild this adapter exactly (empty when it would); ``variant`` as saved."""
    notes = []
    variant = variant or get_adapter_config(model, adapter_name).variant
    if get_variant(variant).peft_type != "LORA":
        notes.append(f"variant {variant!r} has no PEFT LoRA form; only LoRA Studio loads it")
    for name, layer in adapter_layers(model):
        if adapter_name not in layer.adapter_names:
            continue
        if is_attention_layer(layer):
            if _out_proj_adapted(layer, adapter_name):
                notes.append(f"{name}: {MHA_OUT_PROJ_NOTE}")
        elif not isinstance(layer, (LinearLora, ConvLora, EmbeddingLora)):
            notes.append(f"{name}: PEFT has no LoRA form for {type(layer.base_layer).__name__} (only LoRA Studio "
                         "loads this layer's factors)")  # fmt: skip
        elif isinstance(layer, ConvLora):
            base = layer.base_layer
            if any(d != 1 for d in base.dilation) or base.padding_mode != "zeros":
                notes.append(
                    f"{name}: PEFT builds lora_A without the base conv's dilation/padding_mode "
                    f"(dilation={base.dilation}, padding_mode={base.padding_mode!r}), so it computes another update"
                )
    return notes


def _out_proj_adapted(layer: AdapterLayer, adapter_name: str) -> bool:
    """True when the attention's out-projection update is non-zero (only then does PEFT's double count show)."""
    factors = layer.lora_B[adapter_name] if adapter_name in layer.lora_B else {}
    b = factors["out_proj_weight"] if "out_proj_weight" in factors else None
    return b is not None and bool(b.detach().abs().amax() > 0)


# -- PEFT's config (+ tensor keys) -> ours --------------------------------------------------------
def factor_paths(keys: Iterable[str]) -> dict[str, str]:
    """Module path -> its ``lora_A``/``lora_embedding_A`` key, for every adapted module in ``keys``."""
    paths: dict[str, str] = {}
    for key in keys:
        m = _FACTOR_KEY.match(key)
        if m:
            paths.setdefault(m["path"], key)
    return paths


def lora_config_from_peft(peft: dict, tensors: dict[str, torch.Tensor], model: nn.Module) -> LoraConfig:
    """Our config for an adapter PEFT saved: targets and ranks read from the tensors themselves
    (what was really saved), alphas resolved with PEFT's own pattern rule."""
    if peft.get("peft_type", "LORA") == STUDIO_ONLY_PEFT_TYPE:
        raise ValueError(
            f"this adapter uses a LoRA Studio variant ({peft.get('lora_studio_variant')!r}) and its "
            "lora_studio_adapter.json is missing; restore that file beside adapter_config.json"
        )
    if peft.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type={peft.get('peft_type')!r}")
    variant = next((v.name for v in available_variants() if v.peft_lora_flags
                    and all(peft.get(k) == value for k, value in v.peft_lora_flags.items())), "lora")  # fmt: skip
    check_peft_lora_keys(peft, model)  # every key honoured, or refused by name (see peft_lora_keys)
    claimed = get_variant(variant).peft_lora_flags
    if peft.get("use_dora") and "use_dora" not in claimed:
        raise ValueError("this adapter uses PEFT's use_dora=True, and this LoRA Studio has no DoRA variant")
    init = _init_from_peft(peft.get("init_lora_weights", True))
    r, alpha = int(peft["r"]), float(peft.get("lora_alpha", peft["r"]))
    alpha_pattern = peft.get("alpha_pattern") or {}
    all_names = [lm.name for lm in iter_logical_modules(model)]
    paths = factor_paths(tensors)
    if not paths:
        raise ValueError("the adapter file holds no lora_A / lora_embedding_A tensor")
    ranks = {p: int(tensors[k].shape[0]) for p, k in paths.items()}
    doubled = [p for p in paths if _nonzero(tensors.get(f"{p}.base_layer.out_proj.lora_B.weight"))]
    if doubled and peft_doubles_out_proj(peft.get("peft_version")):
        version = peft.get("peft_version")
        warnings.warn(
            f"{doubled[0]}{' and others' if len(doubled) > 1 else ''}: adapter_config.json records "
            f"{f'PEFT {version}' if version else 'no PEFT version'}: {MHA_OUT_PROJ_NOTE}; if such a PEFT trained "
            "this adapter, its outputs there differ from these in that update",
            stacklevel=3,
        )
    alphas = {p: float(next((v for k, v in alpha_pattern.items() if pattern_matches(k, p)), alpha)) for p in paths}
    return LoraConfig(
        r=r,
        alpha=alpha,
        dropout=float(peft.get("lora_dropout", 0.0)),
        targets=exact_targets(list(paths), all_names),
        rank_pattern={exact_pattern_key(p, all_names): v for p, v in ranks.items() if v != r},
        alpha_pattern={exact_pattern_key(p, all_names): v for p, v in alphas.items() if v != alpha},
        init=init,
        use_rslora=bool(peft.get("use_rslora", False)),
        bias=peft.get("bias", "none"),
        modules_to_save=list(peft.get("modules_to_save") or []),
        variant=variant,
    )


def _nonzero(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and bool(tensor.detach().abs().amax() > 0)


def peft_doubles_out_proj(version: str | None) -> bool:
    """Whether the PEFT that wrote a folder (its ``peft_version``) counts an attention's out_proj update
    twice: every release up to 0.21.2, and a folder that does not say (older PEFT wrote no version)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version or ""))
    if m is None:
        return True
    release = tuple(int(part or 0) for part in m.groups())  # "0.22.0.dev0" and "0.21.2@<commit>" read as released
    return release <= (0, 21, 2)


def _init_from_peft(value: bool | str) -> str:
    if value is True or value is False or value in _PLAIN_LOADING_INITS:
        return "default"  # the factors are overwritten by the file; the init only has to leave the base alone
    if value == "gaussian":
        return "gaussian"
    if value == "pissa":
        return "pissa"  # PEFT recomputes the residual base on load with a full SVD; so do we
    if value == "loftq":
        raise ValueError(
            "this adapter was saved with init_lora_weights='loftq': PEFT replaces the base by LoftQ's quantised copy "
            "when it loads it, which LoRA Studio does not reproduce; merge it in PEFT (merge_and_unload) and open the "
            "merged model here"
        )
    if isinstance(value, str) and (value.startswith("pissa_niter") or value.startswith(_UNSUPPORTED_INITS)):
        raise ValueError(
            f"this adapter was saved with init_lora_weights={value!r}, which needs the base weights changed the "
            "way PEFT changed them (not reproducible exactly here); re-save it in PEFT with "
            "path_initial_model_for_weight_conversion to get a plain LoRA adapter"
        )
    raise ValueError(f"unknown init_lora_weights={value!r} in adapter_config.json")


__all__ = [
    "PEFT_PREFIX",
    "adapter_tensors",
    "exact_pattern_key",
    "exact_targets",
    "factor_paths",
    "lora_config_from_peft",
    "peft_compatibility_notes",
    "peft_config_dict",
    "MHA_OUT_PROJ_NOTE",
    "peft_doubles_out_proj",
    "is_attention_layer",
    "upgrade_studio_mha_keys",
]
