"""What the Try tab can try and what its requests answer: plain data and small functions, no threads.

* :class:`TrySource` — one model on offer (``live``, ``trained`` or ``opened``) and the line that
  says what it is;
* :class:`PredictOutcome`, :class:`GenerationOutcome`, :class:`TryFailure` — a request's answer;
* :func:`open_for_trying` — a run folder, adapter folder or merged export from disk, with the run
  config it trained with (for its device); :func:`readable` — an error as one line for people.

:class:`~.try_runner.TryRunner` keeps the sources and runs the requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_studio.core import LoadedModel, Prediction, RunConfig, list_adapters, load_for_inference, load_run_config

from .try_device import TryDevice

LIVE, TRAINED, OPENED = "live", "trained", "opened"
KINDS = (LIVE, TRAINED, OPENED)
NOTHING_TO_TRY = "Nothing to try yet: train a run, pause it, or open an adapter folder (Open adapter…)."
RUN_FILE = "run.toml"  # a run folder's config (core's RUN_CONFIG_FILE)
ADAPTER_CONFIG = "adapter_config.json"  # an adapter folder's (ours and PEFT's)


@dataclass(frozen=True)
class TrySource:
    """A model the tab can try: what it is (``title``, one line) and how to reach it."""

    kind: str  # live, trained or opened
    title: str  # "Live run digits-3: paused at step 120" — always says what is tried
    task: str | None  # the LoadedModel's task: which inputs the tab asks for
    loaded: LoadedModel | None = None  # None for the live run: borrowed per request
    device: TryDevice | None = None  # None for the live run: its own device and autocast
    has_chat_template: bool = False  # a causal LM whose tokenizer has a chat template
    folder: str = ""  # the run (or adapter) folder it came from
    note: str = ""  # something to know (a device fallback)
    has_adapter: bool = True  # False for a merged export or a fully fine-tuned model: no base to compare


@dataclass(frozen=True)
class PredictOutcome:
    """A prediction request's answer: one :class:`~lora_studio.core.Prediction` per input."""

    request: int
    predictions: list[Prediction]
    top_k: int
    step: int | None = None  # the live run's steps done when it was tried


@dataclass(frozen=True)
class GenerationOutcome:
    """A generation's end: each side's whole text, and whether Stop (or a newer request) ended it."""

    request: int
    texts: dict[str, str]
    stopped: bool
    step: int | None = None


@dataclass(frozen=True)
class TryFailure:
    """A request or an open that failed: a message for people (and the traceback for the curious)."""

    request: int
    message: str
    details: str = ""


class NoModelError(RuntimeError):
    """The source went away (the run ended) before the request could borrow its model."""


def carries_adapter(loaded: LoadedModel) -> bool:
    """True when ``loaded`` carries an adapter to switch off (the base column needs one)."""
    return bool(list_adapters(loaded.model))


def has_chat_template(loaded: LoadedModel) -> bool:
    """True when ``loaded`` is a causal LM whose tokenizer carries a chat template."""
    return loaded.task == "causal-lm" and bool(getattr(loaded.tokenizer, "chat_template", None))


def open_for_trying(path: str | Path) -> tuple[LoadedModel, RunConfig | None, str]:
    """The model at ``path`` (a run folder, an adapter folder, or a merged export: core's
    ``load_for_inference``), the run config it trained with (the folder's, or the run folder's
    around an ``adapter/`` or ``best/`` folder; None when there is none) and what was opened."""
    path = Path(path).expanduser()
    loaded = load_for_inference(path)
    config = None
    for folder in (path, path.parent):
        if (folder / RUN_FILE).is_file():
            config = load_run_config(folder)
            break
    if (path / RUN_FILE).is_file():
        what = "run folder"
    elif (path / ADAPTER_CONFIG).is_file():
        what = "adapter folder"
    else:
        what = "merged export"
    return loaded, config, what


def readable(exc: BaseException) -> str:
    """One line for people: the message, with the error's type only when the message alone says nothing."""
    text = str(exc).strip()
    if isinstance(exc, (ValueError, OSError, NoModelError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
