"""Text generation from a causal language model, base and adapted interleaved token by token.

CONTRACT STUB (filled in by the inference work): the dataclasses and signatures are fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LoadedModel

WHICH = ("adapted", "base")


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample: ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible (base and
    adapted draw from generators seeded alike)."""

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    chat_template: bool = True  # wrap the prompt in the tokenizer's chat template when it has one

    def problem(self) -> str | None:
        """What is wrong with these settings, naming the field, or None."""
        if self.max_new_tokens < 1:
            return f"max new tokens must be at least 1, got {self.max_new_tokens}"
        if self.temperature < 0:
            return f"temperature must be >= 0 (0 = greedy), got {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"top-p must be in (0, 1], got {self.top_p}"
        return None


@dataclass(frozen=True)
class GeneratedPiece:
    """One new token's text for one side (``which``: 'adapted' or 'base'); ``index`` counts from 0;
    ``done`` marks the side's last piece (end-of-text, max tokens, or Stop)."""

    which: str
    text: str
    index: int
    done: bool = False


def generate_stream(
    loaded: LoadedModel,
    prompt: str,
    settings: GenerationSettings = GenerationSettings(),
    *,
    sides: Sequence[str] = WHICH,
    device: torch.device | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
    cancel: Any = None,  # a CancelToken: checked before every token; a cancelled stream ends at once
) -> Iterator[GeneratedPiece]:
    """Yield the new text of each side in ``sides`` token by token, interleaved (one token of each
    side in turn), so the window shows both growing together."""
    raise NotImplementedError


def generate_text(loaded: LoadedModel, prompt: str, settings: GenerationSettings = GenerationSettings(), *,
                  sides: Sequence[str] = WHICH, device: torch.device | None = None,
                  autocast: Callable[[], AbstractContextManager] | None = None, cancel: Any = None) -> dict[str, str]:
    """The whole generation of each side: ``{"adapted": text, "base": text}``."""
    raise NotImplementedError
