"""``describe``: the model as a tree of plain dataclasses, for the layer tree and the CLI.

Only module structure and parameter *shapes* are read, so it works unchanged on
a model built on the ``meta`` device: a 7B-parameter config is described
without allocating a byte of weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import AdapterLayer, iter_logical_modules, wrapper_for
from ..variants import Variant, get_variant
from ..variants.lora import Lora
from .config import LoraConfig
from .target_matching import preview_targets


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter owned directly by a module."""

    name: str
    shape: tuple[int, ...]
    numel: int
    dtype: str
    trainable: bool


@dataclass
class ModuleInfo:
    """One module of the tree.  ``name`` is its path ('' for the root)."""

    name: str
    type_name: str
    parameters: list[ParameterInfo]
    own_parameters: int  # parameters held directly by this module
    total_parameters: int  # in this module and below, each shared tensor counted once
    can_wrap: bool
    reason: str | None  # why LoRA cannot wrap it (None when it can)
    adapters: list[str] = field(default_factory=list)  # adapters already attached here
    targeted: bool = False  # the given config would adapt this layer
    rank: int | None = None
    alpha: float | None = None
    added_parameters: int = 0  # what the given config's adapter would add here
    problem: str | None = None  # targeted but impossible: the message saying why
    children: list[ModuleInfo] = field(default_factory=list)

    def walk(self) -> Iterator[ModuleInfo]:
        """This node and every node below it, depth first, in model order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, name: str) -> ModuleInfo:
        """The node at path ``name``."""
        for node in self.walk():
            if node.name == name:
                return node
        raise KeyError(name)


def describe(model: nn.Module, config: LoraConfig | None = None) -> ModuleInfo:
    """The module tree of ``model``; with ``config``, what that adapter would target and add.

    Never raises for a config that matches nothing or targets an unsupported layer: the
    problem is reported on the node (``problem``), so a preview can show it in place.
    """
    preview = preview_targets(model, config) if config is not None else None
    variant = get_variant(config.variant) if config is not None else None
    matched = set(preview.matched) if preview else set()
    nodes: dict[str, ModuleInfo] = {"": _node("", model, None, False)}
    wrapped: dict[str, AdapterLayer] = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    for lm in iter_logical_modules(model):
        node = _node(lm.name, lm.module, wrapped.get(lm.name), lm.inside_attention)
        if lm.name in matched:
            node.targeted = True
            node.rank = config.rank_for(lm.name)
            node.alpha = config.alpha_for(lm.name)
            try:
                node.added_parameters = _added_parameters(lm.module, lm.name, config, variant)
            except ValueError as exc:  # e.g. a rank a grouped conv cannot split: shown in place, as attach says it
                node.problem = str(exc)
        elif preview and lm.name in preview.problems:
            node.problem = preview.problems[lm.name]
        nodes[lm.name] = node
        nodes[lm.name.rpartition(".")[0]].children.append(node)
    root = nodes[""]
    owned = {"": _param_ids(model)}
    owned.update({lm.name: _param_ids(lm.module) for lm in iter_logical_modules(model)})
    _fill_totals(root, owned)
    return root


def _added_parameters(module: nn.Module, name: str, config: LoraConfig, variant: Variant) -> int:
    """What the config's adapter adds to ``module``.  Plain LoRA has a formula; any other variant
    is attached to a meta-device twin of the layer and counted, so every variant's count is exact
    without a formula of its own and without allocating a byte."""
    cls = wrapper_for(module)[0]
    rank = config.rank_for(name)
    refusal = variant.base_refusal(getattr(module, "base_layer", module))
    if refusal:
        raise ValueError(f"variant {variant.name!r} cannot adapt layer {name!r}: {refusal}")
    if type(variant) is Lora:
        return cls.added_parameters(module, rank)
    memo = {id(t): torch.empty_like(t, device="meta") for t in [*module.parameters(), *module.buffers()]}
    memo.update({id(p): nn.Parameter(memo[id(p)], p.requires_grad) for p in module.parameters()})
    twin = cls(copy.deepcopy(module, memo))
    reason = variant.unsupported_reason(twin)
    if reason:  # the words attach would refuse the layer with, shown on its node
        raise ValueError(f"variant {variant.name!r} cannot adapt layer {name!r}: {reason}")
    twin.add_adapter(
        "preview", r=rank, alpha=config.alpha_for(name), dropout=0.0, init="default",
        use_rslora=config.use_rslora, behaviour=variant.behaviour(twin, config.settings()),
    )  # fmt: skip
    return sum(p.numel() for p in twin.adapter_parameters("preview"))


def _param_ids(module: nn.Module) -> set[tuple[int, int]]:
    return {(id(p), p.numel()) for p in module._parameters.values() if p is not None}


def _node(name: str, module: nn.Module, wrapper: AdapterLayer | None, inside_attention: bool) -> ModuleInfo:
    params = [
        ParameterInfo(pname, tuple(p.shape), p.numel(), str(p.dtype).removeprefix("torch."), p.requires_grad)
        for pname, p in module._parameters.items()
        if p is not None
    ]
    can_wrap, reason = True, None
    if name:  # the root is never a layer to wrap
        cls, reason = wrapper_for(module, inside_attention=inside_attention)
        can_wrap = cls is not None
    else:
        can_wrap, reason = False, "the whole model"
    return ModuleInfo(
        name=name,
        type_name=type(module).__name__,
        parameters=params,
        own_parameters=sum(p.numel for p in params),
        total_parameters=0,
        can_wrap=can_wrap,
        reason=reason,
        adapters=wrapper.adapter_names if wrapper is not None else [],
    )


def _fill_totals(node: ModuleInfo, owned: dict[str, set[tuple[int, int]]]) -> set[tuple[int, int]]:
    # Each parameter object counts once per subtree, so tied weights (GPT-2's embedding and
    # output head) are not counted twice; identity works on meta tensors too.
    keys = set(owned[node.name])
    for child in node.children:
        keys |= _fill_totals(child, owned)
    node.total_parameters = sum(n for _, n in keys)
    return keys
