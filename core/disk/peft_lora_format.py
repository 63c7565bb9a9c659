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

Layers adapted in weight space (``nn.MultiheadAttention``, RNN cells) have no
PEFT form; their keys follow the same rule (``attn.lora_A.in_proj_weight``) and
only LoRA Studio reads them back.

The config written for PEFT names the adapted layers explicitly (never
``all-linear`` or a regex whose meaning PEFT versions might read differently),
and gives explicit per-layer ranks and alphas only where a layer differs from
``r``/``lora_alpha``, so what PEFT rebuilds is exactly what was attached.
"""

from __future__ import annotations

import re
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

PEFT_PREFIX = "base_model.model."
STUDIO_ONLY_PEFT_TYPE = "LORA_STUDIO_VARIANT"  # not a PEFT type: PEFT refuses such a folder by name
_FACTOR_KEY = re.compile(r"^(?P<path>.+?)\.(?P<attr>lora_A|lora_embedding_A)(?:\.(?P<rest>.+))?$")
# PEFT init values that change the base weights in a way we cannot reproduce exactly.
_UNSUPPORTED_INITS = ("olora", "loftq", "corda", "eva", "orthogonal", "lora_ga")


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
                        tensors[f"{path}.{attr}.{name}"] = tensor
        elif isinstance(module, ModulesToSave) and adapter_name in module.adapter_names:
            saved_roots.append(path)
            for name, tensor in module.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                tensors[f"{path}.{name}"] = tensor
    tensors.update(_bias_tensors(model, adapter_name, saved_roots))
    return tensors


def _bias_tensors(model: nn.Module, adapter_name: str, saved_roots: list[str]) -> dict[str, torch.Tensor]:
    bias = get_adapter_config(model, adapter_name).bias
    if bias == "none":
        return {}
    if bias == "lora_only":
        return {
            f"{path}.base_layer.bias": layer.base_layer.bias
            for path, layer in adapter_layers(model)
            if adapter_name in layer.adapter_names and getattr(layer.base_layer, "bias", None) is not None
        }
    return {
        name: p
        for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] == "bias" and not any(name.startswith(root + ".") for root in saved_roots)
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
        if not isinstance(layer, (LinearLora, ConvLora, EmbeddingLora)):
            notes.append(f"{name}: {type(layer.base_layer).__name__} is adapted in weight space, which PEFT lacks")
        elif isinstance(layer, ConvLora):
            base = layer.base_layer
            if any(d != 1 for d in base.dilation) or base.padding_mode != "zeros":
                notes.append(
                    f"{name}: PEFT builds lora_A without the base conv's dilation/padding_mode "
                    f"(dilation={base.dilation}, padding_mode={base.padding_mode!r}), so it computes another update"
                )
    return notes


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
    claimed = get_variant(variant).peft_lora_flags
    for flag in ("use_dora", "use_qalora", "lora_bias", "layer_replication", "trainable_token_indices",
                 "target_parameters"):  # fmt: skip
        if peft.get(flag) and flag not in claimed:
            raise ValueError(f"this adapter uses PEFT's {flag}={peft[flag]!r}, which LoRA Studio cannot load yet")
    init = _init_from_peft(peft.get("init_lora_weights", True))
    r, alpha = int(peft["r"]), float(peft.get("lora_alpha", peft["r"]))
    alpha_pattern = peft.get("alpha_pattern") or {}
    all_names = [lm.name for lm in iter_logical_modules(model)]
    paths = factor_paths(tensors)
    if not paths:
        raise ValueError("the adapter file holds no lora_A / lora_embedding_A tensor")
    ranks = {p: int(tensors[k].shape[0]) for p, k in paths.items()}
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


def _init_from_peft(value: bool | str) -> str:
    if value is True or value is False:
        return "default"  # the factors are overwritten by the file; the init only has to leave the base alone
    if value == "gaussian":
        return "gaussian"
    if value == "pissa":
        return "pissa"  # PEFT recomputes the residual base on load with a full SVD; so do we
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
]
