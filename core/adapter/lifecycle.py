"""Attaching, switching, disabling, deleting, merging and unloading named adapters.

The model stays an ordinary ``nn.Module``: matched layers are replaced in place
by wrappers that keep the original as ``base_layer``.  What the studio needs to
remember about the adapters (their configs, which one is active) lives in one
small :class:`AdapterState` on the model.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from ..layers import (
    AdapterLayer,
    MergeNotSupportedError,
    ModulesToSave,
    NonFiniteDeltaError,
    adapter_layers,
    iter_logical_modules,
    module_base,
    wrapper_for,
)
from ..variants import Variant, get_variant
from .config import LoraConfig
from .target_matching import match_targets, name_matches

_STATE_ATTR = "_lora_studio_state"
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class AdapterState:
    """The adapters a model carries: their configs by name, and the active one."""

    configs: dict[str, LoraConfig] = field(default_factory=dict)
    active: str | None = None
    # Per-batch inputs some variants need (a task id, a task embedding); every wrapped layer
    # holds this same dict, so setting a value once reaches them all.
    variant_inputs: dict[str, object] = field(default_factory=dict)


def adapter_state(model: nn.Module) -> AdapterState | None:
    """The model's adapter bookkeeping, or None for a plain model."""
    return model.__dict__.get(_STATE_ATTR)


def adapted_root(model: nn.Module) -> nn.Module | None:
    """The module that holds the adapter bookkeeping: ``model`` itself, or the one sub-module
    :func:`attach` was called on when the adapted model was wrapped afterwards (for example
    ``nn.Sequential(model)``); None for a plain model.  Adapters attached to several sub-modules
    separately are refused: which of them an operation means would be a guess."""
    if adapter_state(model) is not None:
        return model
    roots = [(name, m) for name, m in model.named_modules() if adapter_state(m) is not None]
    if len(roots) > 1:
        raise ValueError(
            f"adapters were attached separately to {len(roots)} sub-modules "
            f"({', '.join(repr(n) for n, _ in roots[:3])}{', ...' if len(roots) > 3 else ''}); "
            "export or merge each of those sub-modules on its own"
        )
    return roots[0][1] if roots else None


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters attached to ``model``, in the order they were added."""
    state = adapter_state(model)
    return list(state.configs) if state else []


def active_adapter(model: nn.Module) -> str | None:
    """The adapter forward uses and training updates, or None."""
    state = adapter_state(model)
    return state.active if state else None


def get_adapter_config(model: nn.Module, adapter_name: str = "default") -> LoraConfig:
    """The config ``adapter_name`` was attached with."""
    return require_adapter_state(model, adapter_name).configs[adapter_name]


def _wrappers(model: nn.Module) -> Iterator[AdapterLayer | ModulesToSave]:
    for module in model.modules():
        if isinstance(module, (AdapterLayer, ModulesToSave)):
            yield module


def attach(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Add adapter ``adapter_name`` to the layers ``config`` targets, freeze the base, and activate it.

    Matched layers are wrapped by composition (the original kept as ``base_layer``); a model
    that already carries adapters gets one more, side by side.  Returns ``model`` (changed in
    place).  On any error the model is left exactly as it was.
    """
    if not isinstance(adapter_name, str) or not _ADAPTER_NAME.fullmatch(adapter_name):
        raise ValueError(
            f"adapter_name must be letters, digits, '_' or '-' (it becomes a module key); got {adapter_name!r}"
        )
    state = adapter_state(model)
    if state is not None and adapter_name in state.configs:
        raise ValueError(f"adapter {adapter_name!r} already exists; delete it first or choose another name")
    targets = match_targets(model, config)
    save_names = _resolve_modules_to_save(model, config)
    variant = get_variant(config.variant)
    settings = config.settings()
    _precheck_layers(model, targets, config, variant)  # before anything changes
    variant.prepare_model(model, targets, settings)
    shared = _shared_parameter_ids(model) if variant.rewrites_base_at_init else set()
    inputs = state.variant_inputs if state is not None else {}
    added: list[AdapterLayer | ModulesToSave] = []
    created: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original) to undo a wrap
    try:
        for name in targets:
            parent, attr = _parent_of(model, name)
            layer = getattr(parent, attr)
            if not isinstance(layer, AdapterLayer):
                wrapper_cls, reason = wrapper_for(layer)
                assert wrapper_cls is not None, reason  # match_targets already refused these
                wrapper = wrapper_cls(layer)
                setattr(parent, attr, wrapper)
                created.append((parent, attr, layer))
                layer = wrapper
            untie = frozenset(k for k, slot in layer.weight_slots().items() if id(slot.param) in shared)
            if untie:
                warnings.warn(
                    f"layer {name!r} shares its weight with another module (tied weights); {variant.title} "
                    "rewrites it, so this layer gets its own copy and the other module is unchanged",
                    stacklevel=2,
                )
            layer.add_adapter(
                adapter_name,
                r=config.rank_for(name),
                alpha=config.alpha_for(name),
                dropout=config.dropout,
                init=config.init,
                use_rslora=config.use_rslora,
                untie=untie,
                behaviour=variant.behaviour(layer, settings),
            )
            layer.variant_inputs = inputs
            added.append(layer)
        for name in save_names:
            parent, attr = _parent_of(model, name)
            module = getattr(parent, attr)
            if not isinstance(module, ModulesToSave):
                module = ModulesToSave(module)
                setattr(parent, attr, module)
                created.append((parent, attr, module.original_module))
            module.add_adapter(adapter_name)
            added.append(module)
    except Exception:
        for layer in added:
            if adapter_name in layer.adapter_names:
                layer.delete_adapter(adapter_name)
        for parent, attr, original in reversed(created):
            setattr(parent, attr, original)
        raise
    if state is None:
        state = AdapterState(variant_inputs=inputs)
        model.__dict__[_STATE_ATTR] = state
        model.requires_grad_(False)  # the base is frozen once, when the first adapter arrives
    state.configs[adapter_name] = config
    set_active_adapter(model, adapter_name)
    return model


def set_active_adapter(model: nn.Module, adapter_name: str | None) -> None:
    """Use ``adapter_name`` in forward and train only it (None: run the base with no adapter).

    Merged adapters are unmerged first, so the output is always that of the active adapter alone.
    """
    state = require_adapter_state(model, adapter_name)
    if any(w.merged for w in _wrappers(model) if isinstance(w, AdapterLayer)):
        unmerge(model)
    state.active = adapter_name
    model.requires_grad_(False)
    for wrapper in _wrappers(model):
        wrapper.set_active(adapter_name)
    if adapter_name is not None:
        _apply_bias_mode(model, state.configs[adapter_name].bias)


def set_adapter(model: nn.Module, adapter_name: str | None) -> None:
    """PEFT's name for :func:`set_active_adapter`: use ``adapter_name`` in forward and train only it."""
    set_active_adapter(model, adapter_name)


def rename_adapter(model: nn.Module, old_name: str, new_name: str) -> None:
    """Give adapter ``old_name`` the name ``new_name`` everywhere (its config, every layer, the active
    one), keeping its place in the order and its parameters themselves (an optimizer holding them is
    unaffected).  A name that is taken or not a valid adapter name is refused before anything changes."""
    state = require_adapter_state(model, old_name)
    if not isinstance(new_name, str) or not _ADAPTER_NAME.fullmatch(new_name):
        raise ValueError(
            f"adapter names are letters, digits, '_' or '-' (they become module keys); got {new_name!r}"
        )
    if new_name == old_name:
        return
    if new_name in state.configs:
        raise ValueError(f"adapter {new_name!r} already exists; delete it first or choose another name")
    for wrapper in _wrappers(model):
        if old_name in wrapper.adapter_names:
            _rename_on_module(wrapper, old_name, new_name)
    _rename_key(state.configs, old_name, new_name)
    if state.active == old_name:
        state.active = new_name


def _rename_on_module(module: nn.Module, old: str, new: str) -> None:
    """Every per-adapter table of one wrapper: its module/parameter dicts, its plain dicts keyed by
    adapter (ranks, alphas, scalings, behaviours) and the active/merged names."""
    for _, child in list(module.named_children()):
        if isinstance(child, (nn.ModuleDict, nn.ParameterDict)) and old in child:
            items = list(child.items())
            for key, _ in items:
                del child[key]
            for key, value in items:
                child[new if key == old else key] = value
    for attr, value in list(vars(module).items()):
        # variant_inputs is keyed by input name and shared by every layer; _tied_originals by weight key.
        if isinstance(value, dict) and attr not in ("variant_inputs", "_tied_originals") and old in value:
            _rename_key(value, old, new)
    if getattr(module, "active_adapter", None) == old:
        module.active_adapter = new
    merged = getattr(module, "merged_adapters", None)
    if isinstance(merged, list) and old in merged:
        merged[merged.index(old)] = new


def _rename_key(table: dict, old: str, new: str) -> None:
    # In place and in order: other objects may hold this very dict.
    items = list(table.items())
    table.clear()
    table.update(((new if key == old else key), value) for key, value in items)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model gives exactly the base output (merged adapters are taken out
    for the duration and merged back after)."""
    wrappers = list(_wrappers(model))
    merged = {id(w): list(w.merged_adapters) for w in wrappers if isinstance(w, AdapterLayer)}
    for w in wrappers:
        if isinstance(w, AdapterLayer):
            w.unmerge()
        w.adapters_disabled = True
    try:
        yield model
    finally:
        for w in wrappers:
            w.adapters_disabled = False
            for name in merged.get(id(w), []):
                w.merge(name)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove ``adapter_name`` everywhere; a layer left with no adapter gets its original back."""
    state = require_adapter_state(model, adapter_name)
    for name, wrapper in _named_wrappers(model):
        if adapter_name not in wrapper.adapter_names:
            continue
        wrapper.delete_adapter(adapter_name)
        if not wrapper.adapter_names:
            parent, attr = _parent_of(model, name)
            setattr(parent, attr, module_base(wrapper))
    del state.configs[adapter_name]
    if not state.configs:
        del model.__dict__[_STATE_ATTR]
    elif state.active == adapter_name:
        set_active_adapter(model, next(iter(state.configs)))


@contextmanager
def variant_inputs(model: nn.Module, **inputs: object) -> Iterator[nn.Module]:
    """Give variants the per-batch inputs they need inside the block (e.g. ``task_ids=...``)."""
    state = require_adapter_state(model, None)
    previous = dict(state.variant_inputs)
    state.variant_inputs.update(inputs)
    try:
        yield model
    finally:
        state.variant_inputs.clear()
        state.variant_inputs.update(previous)


def merge(
    model: nn.Module, adapter_name: str | None = None, *, fresh_weights: bool = False, **inputs: object
) -> None:
    """Merge ``adapter_name`` (default: the active adapter) into the base weights, in float32.

    Idempotent. Every adapter factor is checked for NaN/Inf before any weight is touched;
    a non-finite update raises :class:`NonFiniteDeltaError` naming the layer.  Variants whose
    update depends on an input (a task id, an embedding) take it as keyword ``inputs``; those
    that cannot merge at all raise :class:`MergeNotSupportedError`.  ``fresh_weights``: every
    merged weight becomes a new tensor instead of being written in place -- for a copy whose frozen
    weights are the live model's own tensors (see :func:`~lora_studio.core.disk.merged_export.merged_copy`).
    """
    if inputs:
        with variant_inputs(model, **inputs):
            return merge(model, adapter_name, fresh_weights=fresh_weights)
    state = require_adapter_state(model, adapter_name)
    adapter_name = adapter_name or state.active
    if adapter_name is None:
        raise ValueError("no adapter is active; name the adapter to merge")
    variant = get_variant(state.configs[adapter_name].variant)
    if not variant.can_merge:
        raise MergeNotSupportedError(
            f"adapter {adapter_name!r} uses variant {variant.title!r}, which cannot be merged: "
            f"{variant.merge_note or 'its update depends on the input'}. Export the adapter instead."
        )
    layers = [(n, w) for n, w in adapter_layers(model) if adapter_name in w.adapter_names]
    for name, layer in layers:  # a layer that cannot merge (LoRA on a grouped conv) refuses before any changes
        behaviour = layer.behaviours.get(adapter_name)
        if behaviour is not None and adapter_name not in layer.merged_adapters and not behaviour.can_merge:
            raise MergeNotSupportedError(f"layer {name!r}: {behaviour.cannot_merge_reason}; no weight was changed")
    for name, layer in layers:
        if adapter_name not in layer.merged_adapters and not layer.factors_finite(adapter_name):
            raise NonFiniteDeltaError(
                f"refusing to merge adapter {adapter_name!r}: layer {name!r} has NaN or Inf in its factors; "
                "no weight was changed"
            )
    shared = _shared_parameter_ids(model)
    for name, layer in layers:
        slots = layer.weight_slots()
        untie = frozenset(k for k, slot in slots.items() if id(slot.param) in shared)
        if untie and adapter_name not in layer.merged_adapters:
            warnings.warn(
                f"layer {name!r} shares its weight with another module (tied weights); merging gives it "
                "its own copy so the other module's output is unchanged",
                stacklevel=2,
            )
        layer.merge(adapter_name, untie=frozenset(slots) if fresh_weights else untie)


def _precheck_layers(model: nn.Module, targets: list[str], config: LoraConfig, variant: Variant) -> None:
    """Refuse, before any change, layers the variant cannot adapt and ranks it cannot use there."""
    for name in targets:
        layer = _wrapped_view(model.get_submodule(name))
        reason = variant.base_refusal(layer.base_layer) or variant.unsupported_reason(layer)
        if reason:
            raise ValueError(
                f"variant {variant.name!r} cannot adapt layer {name!r} ({type(layer.base_layer).__name__}): "
                f"{reason}. Change targets or the variant."
            )
        problem = variant.rank_problem(layer, name, config.rank_for(name))
        if problem:
            raise ValueError(problem)


def oversized_ranks(model: nn.Module, config: LoraConfig) -> list[tuple[str, int, int]]:
    """``(layer, rank, limit)`` for every layer ``config`` targets whose rank exceeds its weight's
    smaller dimension (``limit``): past it the update cannot gain rank, only parameters.

    ``attach`` accepts such ranks, as PEFT does (its adapters must load here); a training run
    refuses them, naming the layers (see ``core/training/setup.py``).
    """
    found = []
    for name in match_targets(model, config):  # every target has a wrapper: match_targets refuses the rest
        layer = _wrapped_view(model.get_submodule(name))
        rank = config.rank_for(name)
        limit = min(min(slot.matrix(slot.param).shape) for slot in layer.weight_slots().values())
        if rank > limit:
            found.append((name, rank, limit))
    return found


def _wrapped_view(layer: nn.Module) -> AdapterLayer:
    """``layer`` as its adapter wrapper sees it: itself when wrapped already, else a throw-away wrapper
    (it only reads the layer; nothing in the model changes)."""
    return layer if isinstance(layer, AdapterLayer) else wrapper_for(layer)[0](layer)


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters reachable under more than one name (e.g. GPT-2's tied embedding and output head)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, n in seen.items() if n > 1}


def unmerge(model: nn.Module) -> None:
    """Take every merged update out of the base weights again (idempotent)."""
    for _, layer in adapter_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module, **inputs: object) -> nn.Module:
    """Merge the active adapter and return the plain model: no adapter modules, same outputs.

    Each modules-to-save module is replaced by the active adapter's trained copy. ``inputs``
    go to variants that merge for a chosen input (see :func:`merge`).
    """
    if adapter_state(model) is not None and active_adapter(model) is not None:
        merge(model, **inputs)
    return _unwrap_all(model, keep_trained_copies=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the base model as it was before :func:`attach`."""
    unmerge(model)
    return _unwrap_all(model, keep_trained_copies=False)


def _unwrap_all(model: nn.Module, *, keep_trained_copies: bool) -> nn.Module:
    for name, wrapper in list(_named_wrappers(model)):
        parent, attr = _parent_of(model, name)
        if isinstance(wrapper, ModulesToSave):
            setattr(parent, attr, wrapper.current() if keep_trained_copies else wrapper.original_module)
        else:
            setattr(parent, attr, wrapper.base_layer)
    model.__dict__.pop(_STATE_ATTR, None)
    return model


def _named_wrappers(model: nn.Module) -> list[tuple[str, AdapterLayer | ModulesToSave]]:
    # Collected first: callers replace modules while iterating.
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (AdapterLayer, ModulesToSave))]


def _apply_bias_mode(model: nn.Module, bias: str) -> None:
    if bias == "all":
        for lm in iter_logical_modules(model):
            b = getattr(lm.module, "bias", None)
            if isinstance(b, nn.Parameter):
                b.requires_grad_(True)
    elif bias == "lora_only":
        for _, layer in adapter_layers(model):
            if layer.active_adapter is not None:
                # Only parameters named exactly ``bias`` (a layer's own, an attention's out_proj's): what
                # the adapter file saves, as PEFT does; bias_k/bias_v, bias_ih/bias_hh would train and be lost.
                for pname, p in layer.base_layer.named_parameters():
                    if pname.rsplit(".", 1)[-1] == "bias":
                        p.requires_grad_(True)


def _resolve_modules_to_save(model: nn.Module, config: LoraConfig) -> list[str]:
    """The outermost modules each ``modules_to_save`` entry names; an entry matching nothing is an error."""
    names: list[str] = []
    for entry in config.modules_to_save:
        hits = [lm.name for lm in iter_logical_modules(model) if name_matches([entry], lm.name)]
        if not hits:
            raise ValueError(f"modules_to_save entry {entry!r} matched no module of this model")
        names.extend(h for h in hits if not any(h.startswith(o + ".") for o in hits) and h not in names)
    return names


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (AdapterLayer, ModulesToSave)):
        parent = module_base(parent)
    return parent, attr


def require_adapter_state(model: nn.Module, adapter_name: str | None) -> AdapterState:
    """The model's adapter bookkeeping; ``ValueError`` saying what to do when it has no adapters, or
    none named ``adapter_name`` (None: any adapter will do)."""
    state = adapter_state(model)
    if state is None:
        raise ValueError("this model has no adapters; attach one first")
    if adapter_name is not None and adapter_name not in state.configs:
        raise ValueError(f"no adapter named {adapter_name!r}; this model has: {', '.join(state.configs)}")
    return state


__all__ = [
    "AdapterState",
    "MergeNotSupportedError",
    "NonFiniteDeltaError",
    "active_adapter",
    "adapter_state",
    "attach",
    "delete_adapter",
    "disable_adapters",
    "get_adapter_config",
    "list_adapters",
    "merge",
    "merge_and_unload",
    "rename_adapter",
    "require_adapter_state",
    "set_active_adapter",
    "set_adapter",
    "unload",
    "unmerge",
    "variant_inputs",
]
