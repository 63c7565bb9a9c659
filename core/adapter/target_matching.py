"""Which layers an adapter config targets: one pure function, :func:`match_targets`.

Names are the model's own module paths as ``named_modules()`` prints them for
the *unwrapped* model, so a preview taken before attaching, and matching on a
model that already carries adapters, give the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..layers import LinearLora, LogicalModule, iter_logical_modules, module_base, wrapper_for
from .config import ALL_LINEAR, LoraConfig

_INDEX_PART = re.compile(r"^(?:\d+|.*_(\d+))$")


def layer_index(name: str) -> int | None:
    """The layer index in a module path: its first numeric part (``encoder.layer.3.attn`` -> 3,
    ``encoder.layers.encoder_layer_3.mlp`` -> 3), or None when the path has none."""
    for part in name.split("."):
        m = _INDEX_PART.match(part)
        if m:
            return int(m.group(1) or part)
    return None


def name_matches(spec: list[str] | str, name: str) -> bool:
    """A list entry matches the exact name or a dotted suffix; a string must full-match as a regex."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in spec)


def in_modules_to_save(modules_to_save: LoraConfig | list[str], name: str) -> bool:
    """True when module ``name`` trains fully: it, or a module it sits inside, is named by
    ``modules_to_save`` (a config's, or the list itself) under :func:`name_matches`' rule.

    Such a module is copied and trained whole, so it cannot also carry an adapter.
    The model's root (``""``) is never inside.
    """
    entries = modules_to_save.modules_to_save if isinstance(modules_to_save, LoraConfig) else modules_to_save
    parts = name.split(".")
    return bool(name) and any(name_matches(entries, ".".join(parts[:i])) for i in range(1, len(parts) + 1))


def output_layer_names(model: nn.Module) -> set[str]:
    """Names of the output projection (``get_output_embeddings``), which ``all-linear`` leaves alone."""
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    if out is None:
        return set()
    return {lm.name for lm in iter_logical_modules(model) if lm.module is module_base(out)}


@dataclass(frozen=True)
class TargetPreview:
    """What a config would do to a model, without raising: for live previews in the window."""

    matched: list[str]  # layers that would be adapted, in model order
    problems: dict[str, str]  # targeted layers LoRA cannot wrap -> the message saying why
    error: str | None  # the message :func:`match_targets` would raise, or None


def preview_targets(model: nn.Module, config: LoraConfig) -> TargetPreview:
    """Like :func:`match_targets`, but reports problems instead of raising."""
    modules = list(iter_logical_modules(model))
    excluded_outputs = output_layer_names(model) if config.targets == ALL_LINEAR else set()
    matched: list[str] = []
    problems: dict[str, str] = {}
    saved: list[str] = []  # targeted, but trained fully (modules_to_save): named if nothing else matches
    for lm in modules:
        if in_modules_to_save(config, lm.name):
            if config.targets != ALL_LINEAR and name_matches(config.targets, lm.name):
                saved.append(lm.name)
            continue  # trained fully; cannot also carry an adapter
        if config.exclude is not None and name_matches(config.exclude, lm.name):
            continue
        if config.layers is not None and layer_index(lm.name) not in config.layers:
            continue
        wrapper, reason = wrapper_for(lm.module, inside_attention=lm.inside_attention)
        if config.targets == ALL_LINEAR:
            if wrapper is LinearLora and lm.name not in excluded_outputs:
                matched.append(lm.name)
            continue
        if not name_matches(config.targets, lm.name):
            continue
        if wrapper is None:
            problems[lm.name] = (
                f"targeted layer {lm.name!r} is a {type(lm.module).__name__}: {reason}. "
                "Change targets or add it to exclude."
            )
            continue
        matched.append(lm.name)
    error = next(iter(problems.values()), None)
    if error is None and not matched:
        error = _nothing_matched_message(config, modules)
        if saved:
            error = (f"targets={config.targets!r} names only {', '.join(map(repr, saved[:3]))}, which trains fully "
                     "already (it is in modules_to_save: a run adds the model's classifier head there), so it carries "
                     "no adapter. Target other layers too, or set training.mode = 'head' to train only the head")
    return TargetPreview(matched, problems, error)


def match_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """The names of the layers ``config`` would adapt, in model order. Pure: nothing is changed.

    Raises ``ValueError`` when a targeted layer cannot carry LoRA (naming it and why),
    or when nothing matched (listing the layers that could be targeted).
    """
    preview = preview_targets(model, config)
    if preview.error is not None:
        raise ValueError(preview.error)
    return preview.matched


def _nothing_matched_message(config: LoraConfig, modules: list[LogicalModule], limit: int = 40) -> str:
    eligible = [
        f"{lm.name} ({type(lm.module).__name__})"
        for lm in modules
        if wrapper_for(lm.module, inside_attention=lm.inside_attention)[0] is not None
    ]
    restrictions = []
    if config.exclude is not None:
        restrictions.append(f"exclude={config.exclude!r}")
    if config.layers is not None:
        restrictions.append(f"layers={config.layers!r}")
    where = f" with {', '.join(restrictions)}" if restrictions else ""
    if not eligible:
        return f"targets={config.targets!r} matched no layer{where}: this model has no layer LoRA can wrap"
    shown = "\n  ".join(eligible[:limit])
    more = f"\n  ... and {len(eligible) - limit} more" if len(eligible) > limit else ""
    return (
        f"targets={config.targets!r} matched no layer{where}. "
        f"Layers that can be targeted ({len(eligible)}):\n  {shown}{more}"
    )
