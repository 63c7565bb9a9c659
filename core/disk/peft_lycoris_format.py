"""PEFT's on-disk format for LoHa and LoKr adapters (``peft_type`` ``"LOHA"`` / ``"LOKR"``), both ways.

Our LoHa/LoKr factors already carry PEFT's names and shapes (see
:mod:`lora_studio.core.variants.lycoris`), so a tensor's PEFT key is its state-dict key with the
adapter name taken out, exactly as for LoRA::

    encoder.layer.0.attention.self.query.hada_w1_a.default
      -> base_model.model.encoder.layer.0.attention.self.query.hada_w1_a
    conv.lokr_w2.default   -> base_model.model.conv.lokr_w2      (Conv2d: (b, d, kh, kw))

What differs from LoRA is ``adapter_config.json``: PEFT's ``LoHaConfig``/``LoKrConfig``
name the scale ``alpha`` (not ``lora_alpha``), have no input dropout and no bias
training, and add ``rank_dropout``/``module_dropout``/``use_effective_conv2d`` (both) and
``decompose_both``/``decompose_factor``/``rank_dropout_scale`` (LoKr), which are our
variant settings of the same names.  This module builds that dict from an attached
adapter and reads one back into our :class:`LoraConfig`.  PEFT's LyCORIS scale is always
alpha/r: an rsLoRA scale (alpha/sqrt(r)) is written as the alpha that gives the same
scale, so PEFT computes the same update.

Every field of PEFT 0.21's ``LoHaConfig``/``LoKrConfig`` is in :data:`HONOURED_KEYS` (read, or
with no effect on a loaded adapter, as said there) or :data:`REFUSED_KEYS`; a key PEFT added
later is refused by name when it holds a value other than an unset one (None, false, 0, empty),
so a new PEFT option is never silently dropped.  The factor shapes follow from the config by
PEFT's own rules (``decompose_factor``'s fallback split included), and every tensor is then
checked against the file's shape by key, so a file PEFT wrote loads as PEFT reads it.

PEFT 0.21 has LoHa/LoKr for ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` only, without
a base conv's ``padding_mode``; :func:`lycoris_compatibility_notes` names every layer or
setting PEFT would not rebuild exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from ..adapter.config import LoraConfig, pattern_matches
from ..adapter.lifecycle import get_adapter_config
from ..layers import AdapterLayer, ConvLora, LinearLora, adapter_layers, iter_logical_modules
from .peft_lora_format import PEFT_PREFIX, adapter_tensors, exact_pattern_key, exact_targets

#: Our variant name -> PEFT's ``peft_type``.
PEFT_TYPES: dict[str, str] = {"loha": "LOHA", "lokr": "LOKR"}
# The one factor every adapted module has, whatever its shapes: it names the module in a file.
_MODULE_KEY = re.compile(r"^(?P<path>.+?)\.(?P<attr>hada_w1_a|lokr_w1|lokr_w1_a)(?:\.(?P<rest>.+))?$")
#: The ``adapter_config.json`` keys of PEFT's LoHaConfig/LoKrConfig this module honours, and how.
HONOURED_KEYS: dict[str, str] = {
    "peft_type": "selects LoHa or LoKr",
    "task_type": "informational: the studio's head comes from the run, not the adapter",
    "auto_mapping": "informational (PEFT's class mapping for custom models)",
    "peft_version": "informational",
    "base_model_name_or_path": "informational: the base is the model the adapter is loaded into",
    "revision": "informational: the base is the model the adapter is loaded into",
    "inference_mode": "a loaded adapter is trainable or frozen by what the studio does with it",
    "r": "the rank",
    "alpha": "the scale alpha/r",
    "rank_pattern": "per-layer ranks, PEFT's matching rule",
    "alpha_pattern": "per-layer alphas, PEFT's matching rule",
    "target_modules": "the adapted layers are the ones the file holds tensors for",
    "exclude_modules": "the adapted layers are the ones the file holds tensors for",
    "layers_to_transform": "the adapted layers are the ones the file holds tensors for",
    "layers_pattern": "the adapted layers are the ones the file holds tensors for",
    "modules_to_save": "whole trained modules",
    "init_weights": "only sets a new adapter's start; a loaded adapter's weights come from the file",
    "rank_dropout": "variant setting rank_dropout (training only)",
    "module_dropout": "variant setting module_dropout (training only)",
    "use_effective_conv2d": "variant setting use_effective_conv2d (CP-decomposed conv kernels)",
    "decompose_both": "LoKr variant setting decompose_both",
    "decompose_factor": "LoKr variant setting decompose_factor (PEFT's fallback split included)",
    "rank_dropout_scale": "LoKr variant setting rank_dropout_scale (training only)",
}
#: Keys refused by name when set (key -> why, and what the studio does instead); none in PEFT 0.21.
REFUSED_KEYS: dict[str, str] = {}
_UNSET = (None, False, 0, "", [], {})


def handles_variant(variant: str) -> bool:
    """True for the variants whose PEFT format this module writes."""
    return variant in PEFT_TYPES


def handles_peft_type(peft_type: str | None) -> bool:
    """True for the ``peft_type`` values this module reads."""
    return peft_type in PEFT_TYPES.values()


# -- ours -> PEFT ------------------------------------------------------------------------------------
def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _peft_alpha(layer: AdapterLayer, adapter_name: str) -> float:
    # PEFT's scale is alpha/r; ours may be alpha/sqrt(r) (rsLoRA): give PEFT the alpha with the same scale.
    return layer.scaling[adapter_name] * layer.r[adapter_name]


def lycoris_peft_config_dict(
    model: nn.Module,
    adapter_name: str = "default",
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> dict:
    """The ``adapter_config.json`` from which PEFT rebuilds LoHa/LoKr adapter ``adapter_name`` exactly.

    Targets are the adapted layers by exact name; per-layer ranks and scales that differ from
    the config's go into ``rank_pattern``/``alpha_pattern`` with keys that match only that layer.
    """
    config = get_adapter_config(model, adapter_name)
    if not handles_variant(config.variant):
        raise ValueError(f"adapter {adapter_name!r} uses variant {config.variant!r}, not LoHa or LoKr")
    layers = {n: layer for n, layer in adapter_layers(model) if adapter_name in layer.adapter_names}
    all_names = [lm.name for lm in iter_logical_modules(model)]
    r = config.r
    alpha = config.alpha * (math.sqrt(r) if config.use_rslora else 1.0)
    ranks = {n: layer.r[adapter_name] for n, layer in layers.items()}
    alphas = {n: _peft_alpha(layer, adapter_name) for n, layer in layers.items()}
    result = {
        "peft_type": PEFT_TYPES[config.variant],
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "alpha": _number(alpha),
        "init_weights": True,
        "target_modules": exact_targets(list(layers), all_names),
        "rank_pattern": {exact_pattern_key(n, all_names): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {
            exact_pattern_key(n, all_names): _number(v) for n, v in alphas.items() if not math.isclose(v, alpha)
        },
        "modules_to_save": list(config.modules_to_save) or None,
        "inference_mode": True,
    }
    settings = config.settings()
    result |= {
        "rank_dropout": settings.rank_dropout,
        "module_dropout": settings.module_dropout,
        "use_effective_conv2d": settings.use_effective_conv2d,
    }
    if config.variant == "lokr":
        result |= {
            "decompose_both": settings.decompose_both,
            "decompose_factor": settings.decompose_factor,
            "rank_dropout_scale": settings.rank_dropout_scale,
        }
    return result


def lycoris_peft_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_name`` as they go into ``adapter_model.safetensors``: PEFT's full keys
    (``base_model.model.<path>.hada_w1_a``...), detached, contiguous, CPU copies."""
    return {
        PEFT_PREFIX + key: t.detach().to("cpu").contiguous().clone()
        for key, t in adapter_tensors(model, adapter_name).items()
    }


def lycoris_compatibility_notes(model: nn.Module, adapter_name: str = "default") -> list[str]:
    """Why PEFT would not rebuild this LoHa/LoKr adapter with the same outputs (empty when it would)."""
    config = get_adapter_config(model, adapter_name)
    title = {"loha": "LoHa", "lokr": "LoKr"}.get(config.variant, config.variant)
    notes = []
    if config.bias != "none":
        notes.append(f"bias={config.bias!r}: PEFT's {title} trains no biases and would not load them")
    if config.dropout > 0:
        notes.append(
            f"dropout={config.dropout}: PEFT's {title} has no input dropout (training differs, outputs do not)"
        )
    for name, layer in adapter_layers(model):
        if adapter_name not in layer.adapter_names:
            continue
        base = layer.base_layer
        peft_has_it = (isinstance(layer, LinearLora) and not layer.fan_in_fan_out) or (
            isinstance(layer, ConvLora) and isinstance(base, (nn.Conv1d, nn.Conv2d))
        )
        if not peft_has_it:
            notes.append(f"{name}: PEFT's {title} has no form for {type(base).__name__} (only Linear, Conv1d, Conv2d)")
        elif isinstance(layer, ConvLora) and base.padding_mode != "zeros":
            notes.append(
                f"{name}: PEFT applies the {title} update with zero padding, not the layer's "
                f"padding_mode={base.padding_mode!r}, so it computes another update"
            )
    return notes


# -- PEFT -> ours ------------------------------------------------------------------------------------
def lycoris_factor_paths(keys: Iterable[str]) -> dict[str, str]:
    """Module path -> the key that marks it as adapted, for every LoHa/LoKr module in ``keys``
    (keys without ``base_model.model.``)."""
    # Any one key per module will do: it only names the module (weight-space layers have one per weight).
    return {m["path"]: key for key in keys if (m := _MODULE_KEY.match(key))}


def lycoris_config_from_peft(peft: dict, tensors: dict[str, torch.Tensor], model: nn.Module) -> LoraConfig:
    """Our config for a LoHa/LoKr adapter PEFT saved (``tensors`` keyed without ``base_model.model.``).

    Targets come from the tensors themselves (what was really saved); ranks and alphas follow
    PEFT's own pattern rule, since a full LoKr factor does not show its rank.  PEFT's
    ``rank_dropout``/``module_dropout``/``rank_dropout_scale`` (training only) and
    ``use_effective_conv2d`` become the variant settings of the same names.  A key that is
    neither honoured nor unset is refused by name (see :func:`lycoris_config_problem`).
    """
    peft_type = peft.get("peft_type")
    if not handles_peft_type(peft_type):
        raise ValueError(f"not a LoHa or LoKr adapter: peft_type={peft_type!r}")
    problem = lycoris_config_problem(peft)
    if problem:
        raise ValueError(problem)
    variant = next(v for v, t in PEFT_TYPES.items() if t == peft_type)
    all_names = [lm.name for lm in iter_logical_modules(model)]
    paths = list(lycoris_factor_paths(tensors))
    if not paths:
        raise ValueError(f"the {peft_type} adapter file holds no hada_w1_a / lokr_w1 / lokr_w1_a tensor")
    r, alpha = int(peft["r"]), float(peft.get("alpha", peft["r"]))
    ranks = {p: int(_peft_pattern(peft.get("rank_pattern"), p, r)) for p in paths}
    alphas = {p: float(_peft_pattern(peft.get("alpha_pattern"), p, alpha)) for p in paths}
    settings = {
        "rank_dropout": float(peft.get("rank_dropout") or 0.0),
        "module_dropout": float(peft.get("module_dropout") or 0.0),
        "use_effective_conv2d": bool(peft.get("use_effective_conv2d", False)),
    }
    if variant == "lokr":
        settings |= {
            "decompose_both": bool(peft.get("decompose_both", False)),
            "decompose_factor": _decompose_factor(peft.get("decompose_factor", -1)),
            "rank_dropout_scale": bool(peft.get("rank_dropout_scale", False)),
        }
    return LoraConfig(
        r=r,
        alpha=alpha,
        targets=exact_targets(paths, all_names),
        rank_pattern={exact_pattern_key(p, all_names): v for p, v in ranks.items() if v != r},
        alpha_pattern={exact_pattern_key(p, all_names): v for p, v in alphas.items() if v != alpha},
        modules_to_save=list(peft.get("modules_to_save") or []),
        variant=variant,
        variant_settings=settings,
    )


def lycoris_config_problem(peft: dict) -> str | None:
    """Why an ``adapter_config.json`` of PEFT's LoHa/LoKr cannot be honoured here, naming the key; None
    when every key is honoured (:data:`HONOURED_KEYS`) or unset."""
    for key, value in peft.items():
        if key in HONOURED_KEYS:
            continue
        if key in REFUSED_KEYS and value not in _UNSET:
            return f"adapter_config.json sets {key}={value!r}: {REFUSED_KEYS[key]}"
        if key not in REFUSED_KEYS and value not in _UNSET:
            return (
                f"adapter_config.json sets {key}={value!r}, a {peft.get('peft_type')} option LoRA Studio does not "
                "know (a newer PEFT?), so it cannot compute what PEFT would; remove the key if it is unused, "
                "or train the adapter without that option"
            )
    return None


def _decompose_factor(value: object) -> int:
    # PEFT's factorization splits every size as (1, size) for a factor of 0 or below other than -1, as for 1.
    factor = int(value)
    return 1 if factor < 1 and factor != -1 else factor


def _peft_pattern(patterns: dict | None, name: str, default: float) -> float:
    # PEFT's get_pattern_key: the first key, in the file's order, matching the name or a dotted suffix of it.
    return next((v for k, v in (patterns or {}).items() if pattern_matches(k, name)), default)


__all__ = [
    "HONOURED_KEYS",
    "PEFT_TYPES",
    "REFUSED_KEYS",
    "handles_peft_type",
    "handles_variant",
    "lycoris_compatibility_notes",
    "lycoris_config_from_peft",
    "lycoris_config_problem",
    "lycoris_factor_paths",
    "lycoris_peft_config_dict",
    "lycoris_peft_state_dict",
]
