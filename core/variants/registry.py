"""The variant registry: each variant module registers itself under a name.

The window's variant list and the CLI's choices are built from
:func:`available_variants`, so adding a variant touches only its own module and
the import list in ``variants/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VariantInfo:
    """What the window shows about a variant, and whether it can merge into the base."""

    name: str
    title: str
    description: str  # one paragraph, shown in the window
    paper: str  # reference shown beside the description
    can_merge: bool = True
    settings: type | None = None  # a dataclass of the variant's own settings, if it has any


_REGISTRY: dict[str, VariantInfo] = {}


def register_variant(info: VariantInfo) -> VariantInfo:
    """Add ``info`` under ``info.name``; registering a name twice is a programming error."""
    if info.name in _REGISTRY:
        raise ValueError(f"variant {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def available_variants() -> list[VariantInfo]:
    """Every registered variant, in registration order."""
    return list(_REGISTRY.values())


def variant_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def get_variant(name: str) -> VariantInfo:
    """The variant registered as ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; available: {', '.join(_REGISTRY)}") from None
