"""The Adapters tab's state: the adapters on one copy of the session's base model, and what is done to them.

The library keeps its own copy of the session's loaded base (``session.loaded`` stays the plain
base the tree, the counts and the data preview read); every adapter opened from disk, trained in
this session or combined lives on that one copy, side by side, under its own name, so switching,
combining, saving, trying and exporting all work on the same weights.

Every operation — opening folders (each checked against the base: a folder that does not fit is
refused with the engine's message and the model is left as it was), activating, disabling all,
renaming, deleting, combining, saving — runs as a job on a :class:`~.workers.FunctionWorker`, one
at a time in the order asked (a queue), under the run controller's model lock (the Try tab and
the export dialog take turns with it).  A job ends with the list as it then stands
(:class:`AdapterEntry` rows, read on the worker under the lock), ``sig_changed``; what it did,
``sig_done``; and what it refused, ``sig_error``.  The run just trained joins the list by itself
(``RunController.sig_run_finished``: its adapter folder is opened like any other).

What the workers need is imported at the top (PySide's import hook deadlocked worker threads that
imported a module first).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from lora_studio.core import (
    COMBINATION_TYPES,
    DENSITY_COMBINATIONS,
    SIGN_COMBINATIONS,
    SVD_COMBINATIONS,
    AdapterLayer,
    LoadedModel,
    ModulesToSave,
    TrainResult,
    active_adapter,
    adapter_layers,
    add_weighted_adapter,
    check_adapter_fit,
    combination_problem,
    delete_adapter,
    get_adapter_config,
    get_variant,
    list_adapters,
    load_adapter,
    rename_adapter,
    save_adapter,
    set_active_adapter,
)

from .workers import FunctionWorker

ADAPTER_CONFIG = "adapter_config.json"  # an adapter folder's (ours and PEFT's)
RUN_FILE = "run.toml"  # a run folder's config
METHODS = tuple(COMBINATION_TYPES)
"""The combination methods offered (PEFT's ``combination_type`` names, the engine's order)."""
METHOD_NOTES = dict(COMBINATION_TYPES)  # each method in one line (the engine's words)
DENSITY_METHODS = DENSITY_COMBINATIONS  # they keep a fraction of each update
MAJORITY_SIGN_METHODS = SIGN_COMBINATIONS  # they elect a sign per weight
SVD_RANK_METHODS = SVD_COMBINATIONS  # they end in a truncated SVD at a rank
MAJORITY_SIGNS = ("total", "frequency")  # PEFT's majority_sign_method values
THIS_RUN = "this session's run"
NO_MODEL = "No model loaded: load a model first (the adapters attach to its base)"
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter on the library's model, as the list shows it."""

    name: str
    variant: str  # the variant's title ("LoRA", "DoRA", ...)
    rank: str  # "4", or "4–8" when layers differ
    targets: tuple[str, ...]  # the adapted layers (and modules trained fully, marked "(full)")
    parameters: int  # the adapter's own parameters (factors and trained copies)
    size_bytes: int
    origin: str  # a folder path, "this session's run", "combined from a, b (linear 1, 0)"
    run: str = ""  # the run folder it was trained in, when known
    active: bool = False
    note: str = ""  # something to know (trained on a base with other weights)

    @property
    def targets_text(self) -> str:
        """The targets in a few words: all of them up to four, else the first three and a count."""
        if len(self.targets) <= 4:
            return ", ".join(self.targets)
        return f"{', '.join(self.targets[:3])} and {len(self.targets) - 3} more"

    @property
    def size_text(self) -> str:
        """Parameters and bytes, e.g. ``12.3k params · 48 KiB``."""
        return f"{_count(self.parameters)} params · {_bytes(self.size_bytes)}"


@dataclass(frozen=True)
class CombineRequest:
    """A combination the user asked for (the form's fields)."""

    adapters: tuple[str, ...]
    weights: tuple[float, ...]
    method: str
    new_name: str
    density: float | None = None  # ties, dare_*, magnitude_prune
    majority_sign_method: str | None = None  # ties, dare_ties
    svd_rank: int | None = None  # svd (None: the largest rank among the adapters)
    combine_modules_to_save: bool = False  # combine modules trained fully (a run's head) by their changes too

    def problem(self) -> str | None:
        """What is wrong with the request before the engine sees it, or None."""
        if len(self.adapters) < 2:
            return "Choose two or more adapters to combine"
        if len(set(self.adapters)) != len(self.adapters):
            return "An adapter is chosen twice; choose each once"
        if len(self.weights) != len(self.adapters):
            return "Give one weight per adapter"
        if self.method not in METHODS:
            return f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}"
        if not self.new_name or _NAME.search(self.new_name):
            return (f"The new adapter's name {self.new_name!r} must be letters, digits, '_' or '-'"
                    if self.new_name else "Name the new adapter")
        if self.method in DENSITY_METHODS and self.density is not None and not 0 < self.density <= 1:
            return f"Density must be in (0, 1]; got {self.density:g}"
        return None

    def engine_options(self) -> dict[str, Any]:
        """The keyword arguments for ``add_weighted_adapter`` this method takes (the others are left out)."""
        options: dict[str, Any] = {}
        if self.method in SVD_RANK_METHODS and self.svd_rank:
            options["svd_rank"] = self.svd_rank
        if self.method in DENSITY_METHODS and self.density is not None:
            options["density"] = self.density
        if self.method in MAJORITY_SIGN_METHODS and self.majority_sign_method:
            options["majority_sign_method"] = self.majority_sign_method
        if self.combine_modules_to_save:
            options["combine_modules_to_save"] = True
        return options

    def describe(self) -> str:
        """``combined from a, b (linear 1, 0)``: the list's "from" column."""
        weights = ", ".join(f"{w:g}" for w in self.weights)
        extra = "".join(f", {k.replace('_', ' ')} {v}" for k, v in self.engine_options().items()
                        if k != "combine_modules_to_save")
        if self.combine_modules_to_save:
            extra += ", trained modules too"
        return f"combined from {', '.join(self.adapters)} ({self.method} {weights}{extra})"


@dataclass(frozen=True)
class _Origin:
    text: str
    run: str = ""
    folder: str = ""
    note: str = ""


@dataclass(frozen=True)
class LibraryOutcome:
    """What a job hands back: the list as it stands, what was done and what was refused."""

    job: int
    generation: int  # the library's model it ran on (a job for a replaced model is dropped)
    entries: tuple[AdapterEntry, ...]
    done: str = ""
    problems: tuple[str, ...] = ()
    details: str = ""
    value: Any = None  # a job's product (the folder a save wrote)


class RefusedError(ValueError):
    """A request the library refuses before the engine sees it (its message is for people)."""


class AdapterLibrary(QObject):
    """The adapters on a copy of the session's base, and the jobs that change them."""

    sig_changed = Signal(list)
    """The list changed (payload: list[AdapterEntry], in the order they were added)."""
    sig_busy_changed = Signal(bool)
    """A job started (True) or the last queued one ended (False)."""
    sig_done = Signal(str)
    """A job finished what it was asked (payload: one line, e.g. "Opened digits-a")."""
    sig_error = Signal(str)
    """A job refused or failed (payload: readable lines; the model was left as it was)."""
    sig_saved = Signal(str)
    """An adapter was saved (payload: the folder written)."""

    def __init__(self, session: Any = None, controller: Any = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.controller = controller
        self._lock = controller.model_lock if controller is not None else threading.Lock()
        self._loaded: LoadedModel | None = None  # the library's copy of the base, with the adapters
        self._base: LoadedModel | None = None  # the session's base it was copied from
        self._origins: dict[str, _Origin] = {}  # touched by jobs only (one at a time)
        self._entries: list[AdapterEntry] = []
        self._generation = 0
        self._next_job = 0
        self._queue: deque[tuple[int, Callable[[], LibraryOutcome], Callable[[LibraryOutcome], None] | None]] = deque()
        self._worker: FunctionWorker | None = None
        self._workers: list[FunctionWorker] = []  # held until their threads end (Qt aborts otherwise)
        self._then: Callable[[LibraryOutcome], None] | None = None
        self.last_details = ""  # the traceback of the last failure, for a details button
        if session is not None and hasattr(session, "sig_model_loaded"):
            session.sig_model_loaded.connect(self._on_model_loaded)
        if controller is not None:
            controller.sig_run_finished.connect(self._on_run_finished)

    # -- reading ---------------------------------------------------------------------------------
    def entries(self) -> list[AdapterEntry]:
        """The adapters as the last job left them."""
        return list(self._entries)

    def names(self) -> list[str]:
        """The adapters' names, in the order they were added."""
        return [e.name for e in self._entries]

    def active(self) -> str | None:
        """The active adapter's name (None: none, or all disabled)."""
        return next((e.name for e in self._entries if e.active), None)

    def loaded(self) -> LoadedModel | None:
        """The library's model (the session's base, copied, with every adapter of the list); None
        before the first adapter arrives.  Run it under the controller's model lock."""
        return self._loaded

    def is_busy(self) -> bool:
        """True while a job runs or waits."""
        return self._worker is not None or bool(self._queue)

    def wait_idle(self, timeout_ms: int = 30_000) -> bool:
        """Drop the jobs not started and wait for the one running (closing, tests); True when none runs."""
        self._queue.clear()
        deadline = time.monotonic() + timeout_ms / 1000
        for worker in list(self._workers):
            worker.wait(max(int((deadline - time.monotonic()) * 1000), 1))
        self._workers = [w for w in self._workers if w.is_running()]
        return not self._workers

    # -- operations (each a job on a worker) ------------------------------------------------------
    def open_folders(self, paths: Sequence[str | Path], *, origin: str = "", run: str = "",
                     name: str = "") -> int:
        """Open the adapter folders ``paths`` (ours or PEFT's; a run folder means its ``adapter/``; a
        folder of adapter folders, each one inside), each checked against the base: one that does
        not fit is refused with its reason, the model unchanged.  ``origin``/``run``/``name``: what
        the list says (default: the folder, the run folder around it, the folder's name)."""
        folders = [Path(p).expanduser() for p in paths]

        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            opened, problems = [], []
            for folder in folders:
                for adapter_dir in adapter_folders_in(folder) or [folder]:
                    try:
                        found = self._open_one(loaded, adapter_dir, origin, run, name if len(folders) == 1 else "")
                    except Exception as exc:  # noqa: BLE001 - a folder that does not fit is a message
                        problems.append(f"Cannot open {adapter_dir}: {_readable(exc)}")
                    else:
                        opened.append(found)
            return (f"Opened {', '.join(opened)}" if opened else ""), problems, opened

        return self._submit(job, needs_model=True)

    def activate(self, name: str, then: Callable[[LibraryOutcome], None] | None = None) -> int:
        """Make ``name`` the adapter forward uses (``then``: called on the UI thread once done)."""
        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            set_active_adapter(loaded.model, name)
            return f"{name} is active", [], name

        return self._submit(job, then=then)

    def disable_all(self) -> int:
        """No adapter active: the model answers as its base does."""
        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            set_active_adapter(loaded.model, None)
            return "No adapter is active: the model answers as its base", [], None

        return self._submit(job)

    def rename(self, old: str, new: str, then: Callable[[LibraryOutcome], None] | None = None) -> int:
        """Rename adapter ``old`` to ``new`` (letters, digits, '_' or '-'; not a name in use)."""
        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            _check_new_name(loaded, new)
            rename_adapter(loaded.model, old, new)
            self._origins[new] = self._origins.pop(old, _Origin(""))
            return f"Renamed {old} to {new}", [], new

        return self._submit(job, then=then)

    def delete(self, name: str) -> int:
        """Remove adapter ``name`` from the model (its folder on disk stays)."""
        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            delete_adapter(loaded.model, name)
            self._origins.pop(name, None)
            return f"Deleted {name} (its folder on disk stays)", [], None

        return self._submit(job)

    def combine(self, request: CombineRequest) -> int:
        """Add ``request.new_name``, the weighted combination of ``request.adapters`` by
        ``request.method``; a combination the engine does not define is refused with its reason."""
        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            problem = request.problem()
            if problem:
                raise RefusedError(problem)
            _check_new_name(loaded, request.new_name)
            add_weighted_adapter(loaded.model, list(request.adapters), list(request.weights), request.new_name,
                                 combination_type=request.method, **request.engine_options())
            self._origins[request.new_name] = _Origin(request.describe())
            return f"Combined {', '.join(request.adapters)} into {request.new_name} ({request.method})", [], \
                request.new_name

        return self._submit(job)

    def combination_problem(self, request: CombineRequest) -> str | None:
        """Why the engine would refuse ``request`` on the library's model (and the method that would
        work), or None; reads the adapters' configs and ranks only, so a form can ask on every edit."""
        problem = request.problem()
        if problem or self._loaded is None:
            return problem
        options = request.engine_options()
        options.setdefault("majority_sign_method", "total")
        found = combination_problem(self._loaded.model, list(request.adapters), list(request.weights),
                                    request.method, new_name=request.new_name, **options)
        return found[0].upper() + found[1:] if found else None

    def save(self, name: str, folder: str | Path) -> int:
        """Write adapter ``name`` in PEFT's format (PEFT's rule: a non-default name goes into
        ``folder/<name>``); ``sig_saved`` says where."""
        target = Path(folder).expanduser()

        def job(loaded: LoadedModel) -> tuple[str, list[str], Any]:
            summary = {"label_names": list(loaded.label_names)} if loaded.label_names else None
            origin = self._origins.get(name)
            if origin is not None and origin.text:
                summary = (summary or {}) | {"origin": origin.text}
            written = save_adapter(loaded.model, target, name, run_summary=summary,
                                   base_model_name_or_path=loaded.name_or_path or None)
            return f"Saved {name} to {written}", [], str(written)

        return self._submit(job, then=lambda outcome: self.sig_saved.emit(str(outcome.value)))

    # -- the session's and the controller's signals -----------------------------------------------
    def _on_model_loaded(self, loaded: LoadedModel) -> None:
        if self._base is not None and loaded is not self._base:
            # The adapters belong to the previous base: a new model starts an empty list.
            self._generation += 1
            self._queue.clear()
            self._loaded, self._base, self._origins = None, None, {}
            self._set_entries([])

    def _on_run_finished(self, result: TrainResult) -> None:
        folder = Path(result.adapter_dir) if result.adapter_dir else None
        if result.status == "failed" or folder is None or not (folder / ADAPTER_CONFIG).is_file():
            return  # no adapter (a failed run, or full fine-tuning: a whole model)
        if self.session is not None and getattr(self.session, "loaded", None) is None:
            return
        self.open_folders([folder], origin=THIS_RUN, run=result.run_dir, name=Path(result.run_dir).name)

    # -- jobs -------------------------------------------------------------------------------------
    def _open_one(self, loaded: LoadedModel, folder: Path, origin: str, run: str, name: str) -> str:
        if not (folder / ADAPTER_CONFIG).is_file():
            raise FileNotFoundError(f"no {ADAPTER_CONFIG} here; choose an adapter folder (or a run folder)")
        run = run or run_folder_of(folder)
        wanted = name or (Path(run).name if run and folder.name in ("adapter", "best") else folder.name)
        adapter_name = unique_name(_NAME.sub("-", wanted).strip("-") or "adapter", list_adapters(loaded.model))
        previous = active_adapter(loaded.model) if list_adapters(loaded.model) else None
        fit = check_adapter_fit(loaded.model, folder)  # reads the model only: a refusal leaves it as it was
        if not fit.fits:
            raise RefusedError(fit.problem)
        if fit.note and "different architecture" in fit.note:  # the shapes fit, the base does not: refuse
            raise RefusedError(f"it was trained on another base model ({fit.note.split(': ', 1)[-1]})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the note below says it once, in the list
            load_adapter(loaded.model, folder, adapter_name=adapter_name)
        notes = [str(w.message) for w in caught] + ([fit.note] if fit.note else [])
        if previous is not None:
            set_active_adapter(loaded.model, previous)  # opening adds to the list; Activate switches
        note = next((n.split(": ", 1)[-1] for n in notes if "different weights" in n), "")
        self._origins[adapter_name] = _Origin(origin or str(folder), run, str(folder), note)
        return adapter_name

    def _submit(self, work: Callable[[LoadedModel], tuple[str, list[str], Any]], *, needs_model: bool = False,
                then: Callable[[LibraryOutcome], None] | None = None) -> int:
        self._next_job += 1
        job_id, generation = self._next_job, self._generation

        def run() -> LibraryOutcome:
            with self._lock:
                if generation != self._generation:  # asked for before the session's model changed
                    return LibraryOutcome(job_id, generation, ())
                try:
                    loaded = self._model(create=needs_model)
                    done, problems, value = work(loaded)
                    details = ""
                except Exception as exc:  # noqa: BLE001 - a refusal is a message, never a traceback
                    done, problems, value, details = "", [_readable(exc)], None, traceback.format_exc()
                return LibraryOutcome(job_id, generation, tuple(self._read_entries()), done, tuple(problems),
                                      details, value)

        self._queue.append((job_id, run, then))
        if self._worker is None:
            self._start_next()
        return job_id

    def _model(self, *, create: bool) -> LoadedModel:
        """On the worker, under the lock: the library's model, copied from the session's base on first use."""
        if self._loaded is not None:
            return self._loaded
        base = getattr(self.session, "loaded", None) if self.session is not None else None
        if not create or base is None:
            raise RefusedError(NO_MODEL if base is None else "No adapters yet: open an adapter folder first")
        # A copy: the session's base stays the plain model the tree, the counts and the data read.
        self._loaded = dataclasses.replace(base, model=copy.deepcopy(base.model))
        self._base = base
        return self._loaded

    def _read_entries(self) -> list[AdapterEntry]:
        loaded = self._loaded
        if loaded is None:
            return []
        model = loaded.model
        names = list_adapters(model)
        active = active_adapter(model) if names else None
        return [adapter_entry(model, n, self._origins.get(n, _Origin("")), active) for n in names]

    def _start_next(self) -> None:
        if not self._queue:
            self._worker = None
            self.sig_busy_changed.emit(False)
            return
        first = self._worker is None
        job_id, run, then = self._queue.popleft()
        self._then = then
        worker = FunctionWorker(lambda _on_event: run(), parent=self)
        worker.sig_finished.connect(self._on_job_done)
        worker.sig_failed.connect(self._on_crashed)
        self._workers = [w for w in self._workers if w.is_running()] + [worker]
        self._worker = worker
        if first:
            self.sig_busy_changed.emit(True)
        worker.start()

    def _on_job_done(self, outcome: LibraryOutcome) -> None:
        then, self._then = self._then, None
        if outcome.generation == self._generation:
            self._set_entries(list(outcome.entries))
            if outcome.problems:
                self.last_details = outcome.details
                self.sig_error.emit("\n".join(outcome.problems))
            if outcome.done:
                self.sig_done.emit(outcome.done)
                if then is not None:
                    then(outcome)
        self._start_next()

    def _on_crashed(self, message: str, details: str) -> None:
        # Jobs turn their own errors into outcomes; this is a bug's last net.
        self._then = None
        self.last_details = details
        self.sig_error.emit(message)
        self._start_next()

    def _set_entries(self, entries: list[AdapterEntry]) -> None:
        if entries != self._entries:
            self._entries = entries
            self.sig_changed.emit(list(entries))


# -- plain functions --------------------------------------------------------------------------------
def adapter_entry(model: Any, name: str, origin: Any = None, active: str | None = None) -> AdapterEntry:
    """The list's row for adapter ``name`` on ``model``: read from the model (variant, per-layer
    ranks, the layers it adapts, its own parameters)."""
    config = get_adapter_config(model, name)
    variant = get_variant(config.variant)
    ranks = sorted({layer.r[name] for _, layer in adapter_layers(model) if name in layer.adapter_names})
    layers = [n for n, layer in adapter_layers(model) if name in layer.adapter_names]
    parameters = size = 0
    full: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, (AdapterLayer, ModulesToSave)):
            continue
        for pname, p in module.named_parameters():
            if pname.startswith(("base_layer.", "original_module.")) or name not in pname.split("."):
                continue
            parameters += p.numel()
            size += p.numel() * p.element_size()
        if isinstance(module, ModulesToSave) and name in getattr(module, "adapter_names", [name]):
            full.append(f"{module_name} (full)")
    rank = (str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}") if ranks else "–"
    origin = origin or _Origin("")
    return AdapterEntry(name, variant.title or variant.name, rank, tuple(layers + full), parameters, size,
                        origin.text, origin.run, name == active, origin.note)


def adapter_folders_in(folder: str | Path) -> list[Path]:
    """The adapter folders ``folder`` stands for: itself; a run folder's ``adapter/``; or, for a folder
    of adapter folders (PEFT's layout for several adapters), each one inside (sorted).  Empty: none."""
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG).is_file():
        return [folder]
    if (folder / RUN_FILE).is_file() and (folder / "adapter" / ADAPTER_CONFIG).is_file():
        return [folder / "adapter"]
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.is_dir() and (p / ADAPTER_CONFIG).is_file())
    return []


def run_folder_of(folder: str | Path) -> str:
    """The run folder an adapter folder sits in (``run/adapter``, ``run/best``, ``run/export/adapter``),
    or '' when it is not inside one."""
    folder = Path(folder)
    for candidate in (folder.parent, folder.parent.parent):
        if (candidate / RUN_FILE).is_file():
            return str(candidate)
    return ""


def unique_name(wanted: str, taken: Sequence[str]) -> str:
    """``wanted``, or ``wanted-2``, ``wanted-3``… when it is taken."""
    if wanted not in taken:
        return wanted
    n = 2
    while f"{wanted}-{n}" in taken:
        n += 1
    return f"{wanted}-{n}"


def _check_new_name(loaded: LoadedModel, new: str) -> None:
    if not new or _NAME.search(new):
        raise RefusedError(f"An adapter's name must be letters, digits, '_' or '-'; got {new!r}")
    if new in list_adapters(loaded.model):
        raise RefusedError(f"There is already an adapter named {new!r}; choose another name")


def _readable(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, (ValueError, OSError)) and text:
        return text[0].upper() + text[1:]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
