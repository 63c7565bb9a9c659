"""The variant registry: each variant is a module that registers a :class:`Variant` under a name.

A variant bundles what the window shows (title, description, paper, whether it
merges, its own settings as a typed dataclass) with what the engine runs: the
per-layer :class:`~lora_studio.core.layers.AdapterBehaviour` (initialisation,
forward, update, merge and unmerge) and the model-level training hooks
(optimizer parameter groups, a regularisation term, a hook after each optimizer
step).  The window's variant list, its settings forms and the CLI's choices are
all built from :func:`available_variants`, so adding a variant touches only its
own module and the import list in ``variants/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer
from ..layers.nf4_linear import NF4Linear


@dataclass(frozen=True)
class SettingField:
    """One field of a variant's settings, described for a generated form."""

    name: str
    type_name: str  # "int", "float", "bool", "str", ...
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None  # from a Literal[...] annotation


class Variant:
    """Base class of every variant; the defaults are standard LoRA's."""

    name: str = ""
    title: str = ""
    description: str = ""  # one paragraph, shown in the window
    paper: str = ""  # reference shown beside the description
    can_merge: bool = True
    merge_note: str = ""  # how merging works when it needs more than the adapter (e.g. a task id)
    merge_inputs: tuple[str, ...] = ()  # keyword inputs merge() needs, e.g. ("task_id",), for forms and the CLI
    settings_class: type | None = None  # a dataclass; validation in its __post_init__
    peft_type: str | None = "LORA"  # the PEFT format it saves in, or None when PEFT has no equivalent
    #: Keys this variant adds to PEFT's LoRA ``adapter_config.json`` (DoRA: ``use_dora = true``); a PEFT
    #: folder with all of them set is read back as this variant.
    peft_lora_flags: ClassVar[dict[str, Any]] = {}
    starts_as_identity: bool = True  # a fresh adapter leaves the base output unchanged (the paper's init)
    combinable: bool = False  # add_weighted_adapter may combine it (plain A/B factors only)
    #: Its initialisation rewrites the base weights (PiSSA): a weight shared with another module (a tied
    #: embedding and output head) first gets its own copy, so the other module is unaffected.
    rewrites_base_at_init: bool = False

    # -- settings ----------------------------------------------------------------------------
    def make_settings(self, values: dict[str, Any]) -> Any:
        """The variant's settings object from plain values; errors name ``variant_settings.<field>``."""
        if self.settings_class is None:
            if values:
                raise ValueError(f"variant_settings: variant {self.name!r} has no settings; got {sorted(values)}")
            return None
        known = {f.name for f in dataclasses.fields(self.settings_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"variant_settings: unknown setting(s) {', '.join(unknown)} for variant {self.name!r}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        try:
            return self.settings_class(**values)
        except ValueError as exc:
            raise ValueError(f"variant_settings.{exc}") from None

    def settings_fields(self) -> list[SettingField]:
        """The settings as form fields: name, type, default, help and choices."""
        if self.settings_class is None:
            return []
        hints = typing.get_type_hints(self.settings_class)
        fields = []
        for f in dataclasses.fields(self.settings_class):
            hint = hints.get(f.name)
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            type_name = type(choices[0]).__name__ if choices else getattr(hint, "__name__", str(hint))
            fields.append(SettingField(f.name, type_name, default, f.metadata.get("help", ""), choices))
        return fields

    # -- per-batch inputs ----------------------------------------------------------------------------
    def example_inputs(self, batch_size: int) -> dict[str, Any]:
        """Valid per-batch variant inputs (for tests, previews and export checks). Default: none needed."""
        return {}

    def merge_example(self, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(merge kwargs, forward inputs)`` such that the merged model equals the unmerged one run with
        those inputs (e.g. merge for task 0, and run with every task id 0). Default: nothing needed."""
        return {}, {}

    def forward_inputs(self, merge_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The per-batch inputs under which the unmerged adapter computes what ``merge(**merge_kwargs)``
        merges (used to check an export against the live model). Default: the same values."""
        return dict(merge_kwargs)

    # -- per layer -------------------------------------------------------------------------------
    #: Whether this variant adapts a base stored in 4 bits (``NF4Linear``: a ``*-bnb-4bit`` checkpoint's
    #: layers, or a QLoRA base): only QLoRA, whose merge dequantises; the others would write into it.
    adapts_quantised_base = False

    def base_refusal(self, base: nn.Module) -> str | None:
        """The rule every variant shares, on the layer to be wrapped: a 4-bit base only under a variant that
        adapts one.  None when the base is fine."""
        if isinstance(base, NF4Linear) and not self.adapts_quantised_base:
            return ("its weight is stored in 4 bits (a *-bnb-4bit checkpoint, or a QLoRA base), which only variant "
                    "'qlora' adapts; set lora.variant = 'qlora', or load the model's float weights")
        return None

    def unsupported_reason(self, layer: AdapterLayer) -> str | None:
        """Why this variant cannot adapt ``layer`` (a wrapper of its type), or None when it can."""
        return None

    def rank_problem(self, layer: AdapterLayer, name: str, rank: int) -> str | None:
        """Why ``rank`` cannot be used on layer ``name``, checked before anything changes; None when it can."""
        return None

    def behaviour(self, layer: AdapterLayer, settings: Any) -> AdapterBehaviour:
        """A fresh behaviour object for one adapter on one layer."""
        return AdapterBehaviour()

    def prepare_model(self, model: nn.Module, targets: list[str], settings: Any) -> None:
        """Change the base before adapters attach (e.g. quantise its weights). Default: nothing."""

    # -- training hooks ------------------------------------------------------------------------
    def param_groups(
        self, named_params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, settings: Any
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the trainable parameters. Default: one group."""
        return [{"params": [p for _, p in named_params], "lr": lr, "weight_decay": weight_decay}]

    def regularization(self, model: nn.Module, adapter: str, settings: Any) -> torch.Tensor | None:
        """An extra loss term added to the task loss (e.g. an orthogonality penalty). Default: none."""
        return None

    def after_step(self, model: nn.Module, adapter: str, settings: Any, step: int, total_steps: int) -> None:
        """Called after each optimizer step (rank reallocation, pruning...). Default: nothing."""

    def summary(self, model: nn.Module, adapter: str, settings: Any) -> dict[str, Any]:
        """Facts to report after training (e.g. final per-layer ranks). Default: none."""
        return {}


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add ``variant`` under ``variant.name``; registering a name twice is a programming error."""
    if not variant.name:
        raise ValueError("a variant needs a name")
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant
    return variant


def available_variants() -> list[Variant]:
    """Every registered variant, in registration order."""
    return list(_REGISTRY.values())


def variant_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def get_variant(name: str) -> Variant:
    """The variant registered as ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"variant must be one of {', '.join(_REGISTRY)}; got {name!r}") from None
