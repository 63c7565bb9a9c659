"""Text generation from a causal language model, base and adapted interleaved token by token.

The loop is written here rather than calling transformers' ``generate`` with a
``TextIteratorStreamer``, for three reasons:

* **Stop within one token.** The cancel token is checked before every token; ``generate`` only
  stops between calls of a stopping criterion and needs its streamer drained on another thread.
* **Two sides on one set of weights.** Base and adapted are the same model, the base side with
  :func:`~lora_studio.core.adapter.lifecycle.disable_adapters` around *its* forward only; each
  side keeps its own KV cache (``past_key_values``), and the sides take turns, one token each, so
  the window shows both growing together without a second copy of the model.
* **Reproducible, comparable sampling.** Each side draws from its own ``torch.Generator`` (on the
  CPU, seeded alike from ``settings.seed``): the same seed gives the same text on any device,
  and base and adapted differ only by the adapter, not by whose turn consumed random numbers.

Temperature 0 is greedy (token for token what ``generate(do_sample=False)`` gives); otherwise
top-p (nucleus) sampling at the temperature.  Text is decoded incrementally like transformers'
``TextStreamer``: all generated ids are decoded and the new suffix is the piece, so merged or
multi-byte tokens render right.  Eval mode and no gradients hold per forward only (the model's
modes are restored before each piece is yielded): a reader that lends a live training model
token by token never leaves it in eval mode between its steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LoadedModel
from .running import (
    autocast_or_nothing,
    has_merged_adapter,
    inference_mode,
    is_cancelled,
    model_device,
    side_context,
)

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
    stop_at_end_of_text: bool = True  # False: always max_new_tokens tokens (benchmarks, fixed-length samples)

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
    token_id: int | None = None  # the token picked (None for an end-of-text or Stop piece)


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
    side in turn), so the window shows both growing together.

    Every side ends with a piece marked ``done`` (its last token's, or an empty one at
    end-of-text or Stop).  A piece's text can be empty while a character's bytes are still
    incomplete; it comes with a later piece.  Raises ValueError for bad settings, a model that is
    not a causal LM, or an unknown side, at the call (not at the first piece).  A prompt longer
    than the model's positions keeps its end; generation stops when the positions run out.
    """
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    sides = list(dict.fromkeys(sides))
    unknown = [s for s in sides if s not in WHICH]
    if unknown or not sides:
        raise ValueError(f"sides must be among {', '.join(WHICH)}; got {', '.join(map(repr, sides)) or 'none'}")
    tokenizer = loaded.tokenizer
    if loaded.task != "causal-lm" or tokenizer is None:
        raise ValueError(f"generate needs a causal language model with a tokenizer; this model's task is "
                         f"{loaded.task} (use predict for classifiers)")
    model = loaded.model
    if "base" in sides and has_merged_adapter(model):
        # disable_adapters would take the update out of the weights and put it back around every base
        # token: slow, and each round trip rounds the base weights once more.
        raise ValueError("the model's adapter is merged into its weights; unmerge it to compare with the base, "
                         "or generate the adapted side only")
    device = device or model_device(model)
    limit = position_limit(model)
    prompt_ids = prompt_token_ids(loaded, prompt, settings)
    if limit is not None and prompt_ids.shape[1] >= limit:  # keep the prompt's end: what the next words follow
        prompt_ids = prompt_ids[:, -(limit - 1):]
    # Checked now, not at the first next(): a caller learns of bad settings where it calls.
    return _stream(loaded, prompt_ids.to(device), settings, sides, device, autocast, cancel, limit)


def _stream(loaded: LoadedModel, prompt_ids: torch.Tensor, settings: GenerationSettings, sides: list[str],
            device: torch.device, autocast, cancel: Any, limit: int | None) -> Iterator[GeneratedPiece]:
    model, tokenizer = loaded.model, loaded.tokenizer
    stop_ids = eos_token_ids(loaded) if settings.stop_at_end_of_text else set()
    parameters = forward_parameters(model)
    cache_name = cache_argument(parameters)
    options = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}  # the last position's only
    most = settings.max_new_tokens if limit is None else min(settings.max_new_tokens, limit - prompt_ids.shape[1])
    # A chat model's turn ends with its template's marker (chatml's <|im_end|>), which a tokenizer
    # without chat tokens spells in several ordinary pieces: stop at the text, not only at an id.
    stop_text = end_of_turn_text(tokenizer) if settings.chat_template and settings.stop_at_end_of_text else None
    states = [_Side(which, prompt_ids, settings.seed, stop_text) for which in sides]
    while True:
        running = [s for s in states if not s.done]
        if not running:
            return
        for side in running:
            if is_cancelled(cancel):  # Stop: every unfinished side ends now, with one empty piece
                for s in states:
                    if not s.done:
                        s.done = True
                        yield GeneratedPiece(s.which, s.flush(tokenizer), len(s.ids), done=True)
                return
            token = _next_token(model, side, settings, autocast, cache_name, options)
            index = len(side.ids)
            if token in stop_ids:
                side.done = True
                yield GeneratedPiece(side.which, side.flush(tokenizer), index, done=True)
                continue
            side.ids.append(token)
            side.next_input = torch.tensor([[token]], device=device)
            side.done = len(side.ids) >= most
            text = side.flush(tokenizer) if side.done else side.new_text(tokenizer)
            side.done = side.done or side.ended
            yield GeneratedPiece(side.which, text, index, done=side.done, token_id=token)


def generate_text(loaded: LoadedModel, prompt: str, settings: GenerationSettings = GenerationSettings(), *,
                  sides: Sequence[str] = WHICH, device: torch.device | None = None,
                  autocast: Callable[[], AbstractContextManager] | None = None, cancel: Any = None) -> dict[str, str]:
    """The whole generation of each side: ``{"adapted": text, "base": text}`` (the sides asked for)."""
    texts = {which: "" for which in dict.fromkeys(sides)}
    for piece in generate_stream(loaded, prompt, settings, sides=sides, device=device, autocast=autocast,
                                 cancel=cancel):
        texts[piece.which] += piece.text
    return texts


def prompt_token_ids(loaded: LoadedModel, prompt: str, settings: GenerationSettings) -> torch.Tensor:
    """The prompt as a ``[1, n]`` id tensor, in the tokenizer's chat template when asked and it has
    one; an empty prompt starts from the begin-of-text (or end-of-text) token."""
    tokenizer = loaded.tokenizer
    if settings.chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote them already
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("the prompt is empty and the tokenizer has no begin-of-text token; type a prompt")
        ids = [start]
    return torch.tensor([ids], dtype=torch.long)


def position_limit(model: torch.nn.Module) -> int | None:
    """How many positions (prompt and new tokens) the model has, from its config; None if unsaid."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def end_of_turn_text(tokenizer: Any) -> str | None:
    """The text the tokenizer's chat template writes after an assistant's answer (chatml: ``<|im_end|>``),
    found by rendering a one-answer conversation; None without a template or when it writes nothing."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    answer = "\u2063answer\u2063"  # a text no template writes on its own
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "question"},
                                              {"role": "assistant", "content": answer}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain exchange: ids-only stopping
        return None
    end = text.rfind(answer)
    marker = text[end + len(answer):].strip() if end >= 0 else ""
    eos = getattr(tokenizer, "eos_token", None)
    if eos and marker.endswith(eos) and marker != eos:  # e.g. "<|im_end|></s>": the turn's own marker is enough
        marker = marker[: -len(eos)].strip() or marker
    return marker or None


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """Every id that ends a generation: the tokenizer's end-of-text and the model's generation config's."""
    found: set[int] = set()
    for value in (getattr(loaded.tokenizer, "eos_token_id", None),
                  getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(v for v in value if isinstance(v, int))
    return found


class _Side:
    """One side's generation: its cache, its generator, the ids so far and the text shown so far."""

    def __init__(self, which: str, prompt_ids: torch.Tensor, seed: int, stop_text: str | None = None) -> None:
        self.which = which
        self.stop_text = stop_text or None  # the text that ends the turn (not shown); None: ids only
        self.ended = False  # the stop text was generated
        self.next_input = prompt_ids  # the whole prompt first, then one new token at a time
        self.past: Any = None
        self.generator = torch.Generator().manual_seed(seed)  # CPU: the same draws on every device
        self.ids: list[int] = []
        self.shown = ""
        self.done = False

    def new_text(self, tokenizer) -> str:
        """The text the new token adds, decoding all ids so far (as transformers' TextStreamer does:
        a token alone can be half a character, or change how the previous one renders); held back
        while the text ends in an incomplete character."""
        text = tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._take(text, hold_back=True)

    def flush(self, tokenizer) -> str:
        """Everything not yet shown, complete or not (the side's last piece)."""
        return self._take(tokenizer.decode(self.ids, skip_special_tokens=True)) if self.ids else ""

    def _take(self, text: str, hold_back: bool = False) -> str:
        if self.stop_text:
            cut = text.find(self.stop_text)
            if cut >= 0:  # the turn is over: the marker and anything after it are not the answer
                text, self.ended, hold_back = text[:cut], True, False
            elif hold_back:  # the text may be the start of the marker: show it once it is not
                keep = next((k for k in range(len(self.stop_text) - 1, 0, -1) if text.endswith(self.stop_text[:k])), 0)
                text = text[:len(text) - keep]
        new = text[len(self.shown):]
        self.shown = text if len(text) >= len(self.shown) else self.shown
        return new


def forward_parameters(model: torch.nn.Module) -> set[str]:
    """The names the model's forward takes (empty when its signature cannot be read)."""
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_argument(parameters: set[str]) -> str:
    """The name the model's forward takes its KV cache by: ``cache`` (transformers 5.x) or
    ``past_key_values`` (earlier, and most remote-code models); outputs carry it by the same name."""
    return "cache" if "cache" in parameters else "past_key_values"


def _next_token(model: torch.nn.Module, side: _Side, settings: GenerationSettings, autocast, cache_name: str,
                options: dict[str, Any]) -> int:
    """One forward of ``side`` (its adapters toggled for it) with its cache, and the token it picks."""
    with inference_mode(model), side_context(model, side.which), autocast_or_nothing(autocast):
        out = model(input_ids=side.next_input, use_cache=True, **{cache_name: side.past}, **options)
    side.past = getattr(out, cache_name)
    return pick_token(out.logits[0, -1].float(), settings, side.generator)


def pick_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """Greedy at temperature 0; else a draw from the top-p nucleus of softmax(logits / temperature)."""
    if settings.temperature == 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.cpu() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probabilities.sort(descending=True)
        before = sorted_p.cumsum(0) - sorted_p  # mass of the tokens ranked above each one
        sorted_p[before >= settings.top_p] = 0  # the smallest set reaching top_p; the top token always stays
        probabilities = torch.zeros_like(probabilities).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probabilities, 1, generator=generator))
