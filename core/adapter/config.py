"""The typed configuration of one LoRA adapter.

Every field carries a one-line help note (``metadata["help"]``) that the window
and the CLI show beside it, and every value is validated in one place,
:meth:`LoraConfig.validate`, which runs on construction.  A bad value raises a
``ValueError`` that names the field and the value, so the message can be shown
next to the offending input as is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..layers import lora_scaling
from ..variants import get_variant

INIT_CHOICES: tuple[str, ...] = ("default", "gaussian")  # PiSSA is a variant: variant = "pissa"
BIAS_CHOICES: tuple[str, ...] = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"
LEGACY_PISSA_INIT = "pissa"  # read as variant = "pissa" (see LoraConfig._read_legacy_pissa_init)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoraConfig:
    """What to adapt and how; one instance describes one named adapter."""

    r: int = field(default=8, metadata=_help("Rank of the update B·A; 8 is the common starting point."))
    alpha: float = field(
        default=16.0, metadata=_help("Scale numerator: the update is multiplied by alpha/r (alpha/sqrt(r) with rsLoRA).")
    )
    dropout: float = field(default=0.0, metadata=_help("Dropout on the adapter's input, in [0, 1)."))
    targets: list[str] | str = field(
        default=ALL_LINEAR,
        metadata=_help(
            "Layers to adapt: a list of names (exact, or a '.suffix' match), a string that must "
            "full-match as a regex, or 'all-linear'."
        ),
    )
    exclude: list[str] | str | None = field(
        default=None, metadata=_help("Layers never to adapt, in the same forms as targets.")
    )
    layers: list[int] | None = field(
        default=None,
        metadata=_help("Restrict to these layer indices (the first numeric part of a module path)."),
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata=_help("Per-layer rank: {name or regex: rank}, matched like PEFT.")
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata=_help("Per-layer alpha: {name or regex: alpha}, matched like PEFT.")
    )
    init: str = field(
        default="default",
        metadata=_help(
            "'default': Kaiming A and zero B (starts as identity); 'gaussian': Gaussian A, zero B. "
            "(PiSSA, which starts from the weight's principal singular vectors, is the variant 'pissa'.)"
        ),
    )
    use_rslora: bool = field(default=False, metadata=_help("Rank-stabilised scaling alpha/sqrt(r)."))
    bias: str = field(
        default="none", metadata=_help("Which biases train: 'none', 'all', or 'lora_only' (adapted layers).")
    )
    modules_to_save: list[str] = field(
        default_factory=list, metadata=_help("Modules trained fully and saved with the adapter (e.g. a new head).")
    )
    variant: str = field(default="lora", metadata=_help("The LoRA variant, by its registry name."))
    variant_settings: dict[str, Any] = field(
        default_factory=dict, metadata=_help("The variant's own settings (its settings dataclass's fields).")
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation, in one place -------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value is not acceptable."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an integer >= 1, got {self.r!r}")
        if not _is_number(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a number > 0, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _check_name_spec("targets", self.targets, allow_none=False)
        _check_name_spec("exclude", self.exclude, allow_none=True)
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise ValueError(f"layers must be a list of non-negative integers, got {self.layers!r}")
            self.layers = list(self.layers)
        for key, value in _checked_pattern("rank_pattern", self.rank_pattern).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rank_pattern[{key!r}] must be an integer >= 1, got {value!r}")
        for key, value in _checked_pattern("alpha_pattern", self.alpha_pattern).items():
            if not _is_number(value) or value <= 0:
                raise ValueError(f"alpha_pattern[{key!r}] must be a number > 0, got {value!r}")
        if self.init == LEGACY_PISSA_INIT:
            self._read_legacy_pissa_init()
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}; got {self.init!r}")
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"use_rslora must be true or false, got {self.use_rslora!r}")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"bias must be one of {', '.join(BIAS_CHOICES)}; got {self.bias!r}")
        if not isinstance(self.modules_to_save, (list, tuple)) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        self.modules_to_save = list(self.modules_to_save)
        variant = get_variant(self.variant)
        if not isinstance(self.variant_settings, dict):
            raise ValueError(f"variant_settings must be a mapping of setting name to value; got {self.variant_settings!r}")
        variant.make_settings(self.variant_settings)

    def _read_legacy_pissa_init(self) -> None:
        # Runs and adapter folders written before PiSSA had one identity (and PEFT's own configs,
        # init_lora_weights="pissa") say init = "pissa"; it means the PiSSA variant.
        if self.variant not in ("lora", "pissa"):
            raise ValueError(
                f"init='pissa' means the PiSSA variant, which cannot be combined with variant {self.variant!r}; "
                "use variant = 'pissa' alone, or init = 'default' with this variant"
            )
        self.init, self.variant = "default", "pissa"

    def settings(self) -> Any:
        """The variant's validated settings object (None for a variant without settings)."""
        return get_variant(self.variant).make_settings(self.variant_settings)

    # -- per-layer values -----------------------------------------------------------
    def rank_for(self, name: str) -> int:
        """The rank layer ``name`` gets: the first matching ``rank_pattern`` key, else ``r``."""
        return int(_pattern_lookup(self.rank_pattern, name, self.r))

    def alpha_for(self, name: str) -> float:
        """The alpha layer ``name`` gets: the first matching ``alpha_pattern`` key, else ``alpha``."""
        return float(_pattern_lookup(self.alpha_pattern, name, self.alpha))

    def scaling_for(self, name: str) -> float:
        """The update's scale for layer ``name``: :func:`~lora_studio.core.layers.lora_scaling` of its
        alpha and rank."""
        return lora_scaling(self.alpha_for(name), self.rank_for(name), self.use_rslora)

    # -- plain data, for TOML/JSON ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, dicts, scalars) that round-trips through :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraConfig:
        """Build from a plain dict; an unknown key is refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoRA config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> LoraConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def pattern_matches(key: str, name: str) -> bool:
    """PEFT's rule for rank/alpha patterns: ``key`` matches the whole name or a dotted suffix of it."""
    return re.fullmatch(rf"(.*\.)?(?:{key})", name) is not None


def _pattern_lookup(patterns: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if pattern_matches(key, name):
            return value
    return default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_regex(field_name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field_name} is not a valid regular expression: {pattern!r} ({exc})") from None


def _check_name_spec(field_name: str, spec: Any, *, allow_none: bool) -> None:
    if spec is None:
        if allow_none:
            return
        raise ValueError(f"{field_name} must be a list of layer names, a regex string or 'all-linear'; got None")
    if isinstance(spec, str):
        if not spec:
            raise ValueError(f"{field_name} must not be an empty string")
        if spec != ALL_LINEAR:
            _check_regex(field_name, spec)
        return
    if isinstance(spec, (list, tuple)) and all(isinstance(s, str) and s for s in spec):
        if not spec and not allow_none:
            raise ValueError(f"{field_name} must name at least one layer; got an empty list")
        return
    raise ValueError(f"{field_name} must be a list of layer names or a regex string; got {spec!r}")


def _checked_pattern(field_name: str, patterns: Any) -> dict[str, Any]:
    if not isinstance(patterns, dict):
        raise ValueError(f"{field_name} must be a mapping of layer name or regex to value; got {patterns!r}")
    for key in patterns:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{field_name} keys must be non-empty strings; got {key!r}")
        _check_regex(f"{field_name} key", key)
    return patterns
