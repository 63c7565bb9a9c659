"""Shared mechanics of variants whose update depends on a per-batch input (a task id, a task embedding).

Such an adapter has one update *per value of the input*, so merging needs the
value: ``merge(model, task_id=2)`` puts task 2's update into the weights.  The
behaviour remembers the value it merged with, because :func:`unmerge` (and the
re-merge :func:`disable_adapters` does on leaving its block) must take out
exactly that update while the input is no longer given.

Inputs reach a layer through ``layer.variant_inputs`` (filled per batch by
``variant_inputs(model, ...)``); a missing one raises
:class:`MissingVariantInputError`, whose message names the input and says how
to pass it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer


class MissingVariantInputError(ValueError):
    """A variant needs a per-batch input (e.g. ``task_ids``) that was not given."""


def is_weight_space(layer: AdapterLayer) -> bool:
    """True for layers adapted in weight space (MultiheadAttention, RNN cells): no input-side A/B path."""
    return type(layer).project_down is AdapterLayer.project_down


def factor_slots(layer: AdapterLayer, adapter: str) -> Iterator[tuple[nn.Module, str]]:
    """``(owner, name)`` of every tensor of ``adapter`` in the layer's factor containers.

    The owner is the module (or ``nn.ParameterDict``) that holds the tensor under ``name``,
    so a variant can swap a factor for a tensor of another shape (a stack of task banks).
    """
    for attr in layer.factor_attributes:
        container = getattr(layer, attr)
        if adapter not in container:
            continue
        entry = container[adapter]
        if isinstance(entry, nn.Parameter):
            yield container, adapter
            continue
        for name, _ in list(entry.named_parameters()):
            path, _, leaf = name.rpartition(".")
            yield (entry.get_submodule(path) if path else entry), leaf


def get_slot(owner: nn.Module, name: str) -> nn.Parameter:
    """The parameter at ``owner``/``name``."""
    return owner[name] if isinstance(owner, nn.ParameterDict) else getattr(owner, name)


def put_slot(owner: nn.Module, name: str, value: nn.Parameter) -> None:
    """Replace the parameter at ``owner``/``name`` (registered, so it is saved and trained)."""
    if isinstance(owner, nn.ParameterDict):
        owner[name] = value
    else:
        setattr(owner, name, value)


class ConditionedBehaviour(AdapterBehaviour):
    """An adapter whose update is fixed once the input named :attr:`merge_input` is chosen.

    Subclasses set :attr:`merge_input` and implement :meth:`check_merge_input` (validate and
    normalise a value) and :meth:`missing_input_message`; :meth:`current_input` then gives the
    value to use: the one being merged or unmerged, else the one given with the batch.
    """
    merge_is_per_slot = False  # the merge pins and remembers the input it merged for

    #: The ``variant_inputs`` key that selects the update merged into the weights.
    merge_input: str = ""

    def __init__(self) -> None:
        self.merged_with: Any = None  # the input of the current (or last) merge, for unmerge and re-merge
        self._pinned: Any = None  # set only while merge/unmerge compute the update

    # -- for subclasses -----------------------------------------------------------------------
    def check_merge_input(self, value: object) -> Any:
        """Validate ``value`` of :attr:`merge_input` and return it normalised; raise ValueError if bad."""
        raise NotImplementedError

    def missing_input_message(self, name: str) -> str:
        """What to tell the user when input ``name`` was not given."""
        raise NotImplementedError

    def snapshot(self, value: Any) -> Any:
        """The value to remember for unmerge (e.g. a detached copy of a tensor the caller may change)."""
        return value

    # -- the input in effect ---------------------------------------------------------------------
    def current_input(self, layer: AdapterLayer) -> Any:
        """The value selecting the update now: the merged one during merge/unmerge, else the batch's."""
        if self._pinned is not None:
            return self._pinned
        value = layer.variant_inputs.get(self.merge_input)
        if value is None:
            raise MissingVariantInputError(self.missing_input_message(self.merge_input))
        return self.check_merge_input(value)

    # -- merging for a chosen input --------------------------------------------------------------
    def merge(self, layer: AdapterLayer, adapter: str, untie: frozenset[str]) -> None:
        """Merge the update for the given input; with none given, the input of the last merge again
        (what :func:`disable_adapters` needs when it re-merges on leaving its block)."""
        value = layer.variant_inputs.get(self.merge_input)
        if value is not None:
            value = self.snapshot(self.check_merge_input(value))
        elif self.merged_with is not None:
            value = self.merged_with
        else:
            raise MissingVariantInputError(self.missing_input_message(self.merge_input))
        self._pinned = value
        try:
            super().merge(layer, adapter, untie)
        finally:
            self._pinned = None
        self.merged_with = value

    def check_merged_again(self, layer: AdapterLayer, adapter: str) -> None:
        """Merging for another input while one is merged would silently keep the old one: refuse."""
        value = layer.variant_inputs.get(self.merge_input)
        if value is None or self.merged_with is None:
            return
        value = self.check_merge_input(value)
        same = torch.equal(value, self.merged_with) if isinstance(value, torch.Tensor) else value == self.merged_with
        if not same:
            raise ValueError(
                f"adapter {adapter!r} is already merged for {self.merge_input}={self._shown(self.merged_with)}; "
                f"unmerge it before merging {self.merge_input}={self._shown(value)}"
            )

    @staticmethod
    def _shown(value: Any) -> str:
        return f"tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)

    def unmerge(self, layer: AdapterLayer, adapter: str) -> None:
        """Take out exactly the update that was merged (its input is remembered)."""
        self._pinned = self.merged_with
        try:
            super().unmerge(layer, adapter)
        finally:
            self._pinned = None
