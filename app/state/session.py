"""The window's one piece of state: the run config being edited, and the model it describes.

Widgets read from and write to a :class:`StudioSession`; they never keep a second copy
of the configuration: the window edits a config, it keeps no parallel state (ARCHITECTURE.md,
"## The window: state, widgets, panels, dialogs").  Every change goes through
:meth:`StudioSession.set_config`, which validates by rebuilding the dataclasses and emits
``sig_config_changed``.

Validity (what the Start button reads)
--------------------------------------
The config object is always valid (the dataclasses refuse bad values), but what the user
*typed* may not be: a field holding ``"abc"`` keeps the last good value in the config and
its message in :attr:`StudioSession.field_errors`.  :meth:`StudioSession.is_valid` is True
when no field holds a refused value *and* the LoRA section targets at least one layer of
the model without a problem; :attr:`StudioSession.config_error` is the first message (or
None), and ``sig_validity_changed(valid, message)`` fires whenever either changes, so a
Start button subscribes instead of polling.  With no model loaded (or one still loading), or
data that does not fit the model's task, the config cannot start either: ``config_error``
says so, and names the fix.

Model changes and unsaved work
------------------------------
A model change goes through :meth:`StudioSession.begin_model_change`; when the new model's
meta-device build arrives, :func:`~.model_change.carry_over` (the one rule) makes the config
for it, ``sig_model_notice`` names what could not carry over, and :meth:`undo_model_change`
gives back the previous config.  The session is *modified* when its config differs from the
one last saved or opened (:meth:`mark_saved`); ``sig_modified_changed`` drives the title's
marker and the window's "save your changes?" questions.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from lora_studio.core import (
    LoadedModel,
    LoraConfig,
    ModelConfig,
    ModuleInfo,
    RunConfig,
    TargetPreview,
    describe,
    preview_targets,
    stored_quantization,
    training_lora_config,
)

from .model_change import ModelFacts, carry_over, data_problem, defaults_for, run_name_for
from .project_files import default_run_dir

NO_LAYERS = "(?!)"
"""The ``targets`` regex that matches no layer: what "tick nothing" writes (an empty list is refused)."""
NO_MODEL = "No model loaded: open a demo (Model menu) or choose a model and press Load model"
LOADING = "The model is still loading"


@dataclasses.dataclass
class _PendingChange:
    model: ModelConfig  # the [model] being loaded
    exact: RunConfig | None  # take this config as it is (a project, an undo), not the carry-over rule
    old: RunConfig  # the config before the change (what Undo restores)
    old_targeted: list[str]  # the layers it adapted on the last model


def model_facts(model: Any, head: str | None, task: str) -> ModelFacts:
    """What :func:`~.model_change.carry_over` needs of ``model`` (a meta-device build will do)."""
    tree = describe(model, training_lora_config(LoraConfig(targets="all-linear"), head))
    nodes = [n for n in tree.walk() if n.name]
    prefix = f"{head}." if head else None
    wrappable = [n for n in nodes if n.can_wrap and not (prefix and (n.name + ".").startswith(prefix))]
    return ModelFacts(
        task=task, names=[n.name for n in nodes], wrappable=[n.name for n in wrappable],
        all_linear=[n.name for n in nodes if n.targeted],
        convolutions=[n.name for n in wrappable if n.type_name.startswith("Conv") and n.type_name != "Conv1D"],
        four_bit=stored_quantization(model) == "bnb-4bit",
    )


class StudioSession(QObject):
    """The run config, the loaded model and what the config does to it."""

    sig_config_changed = Signal(object)
    """The run config changed (payload: the new RunConfig)."""
    sig_model_loading = Signal(str)
    """A model started loading (payload: a description for the progress indicator)."""
    sig_model_loaded = Signal(object)
    """A model finished loading (payload: the LoadedModel); ``tree`` is up to date."""
    sig_model_failed = Signal(str)
    """Loading failed (payload: the message)."""
    sig_tree_changed = Signal(object)
    """The module tree changed: a meta-device preview, a loaded model, or new targets (payload: ModuleInfo)."""
    sig_run_event = Signal(object)
    """An event from the training engine (StepMetrics, EvalMetrics, Finished, ...)."""
    sig_project_changed = Signal(object)
    """The project file changed (payload: Path or None)."""
    sig_validity_changed = Signal(bool, str)
    """Whether the config can start a run changed: (valid, the first problem's message or '')."""
    sig_model_notice = Signal(str)
    """A model change left out something the user set (payload: one line; '' hides the notice)."""
    sig_modified_changed = Signal(bool)
    """The config started or stopped differing from the one last saved or opened."""

    def __init__(self, config: RunConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if config is None:
            # Never the working folder: a run with no folder chosen goes to the user's app data.
            config = RunConfig()
            config = config.replace(output=dataclasses.replace(config.output,
                                                               dir=default_run_dir(run_name_for(config.model))))
        self.config: RunConfig = config
        self.loaded: LoadedModel | None = None  # the base model, with weights, no adapter attached
        self.meta_model: Any = None  # the same architecture on the meta device, shown while loading
        self.head: str | None = None  # the model's classifier head: the trainer trains it fully
        self.tree: ModuleInfo | None = None
        self.project_path: Path | None = None
        self.field_errors: dict[str, str] = {}  # "section.field" -> message of a refused typed value
        self.task: str | None = None  # the model's task, once its build arrived
        self.facts: ModelFacts | None = None  # what the model change rule knows of the model
        self.model_defaults: RunConfig = copy.deepcopy(self.config)  # what the model came with
        self.undo_config: RunConfig | None = None  # the config before the last model change
        self.load_error: str | None = None  # the last load failed after its meta build
        self._pending: _PendingChange | None = None
        self._saved: RunConfig = copy.deepcopy(self.config)
        self._modified = False
        message = self.config_error
        self._validity: tuple[bool, str] = (message is None, message or "")
        self.sig_model_failed.connect(self._load_failed)

    # -- the config -------------------------------------------------------------------------------
    def set_config(self, config: RunConfig) -> None:
        """Replace the run config (already validated: dataclasses validate on construction)."""
        self.config = config
        self._refresh_tree()
        self.sig_config_changed.emit(config)
        self._update_validity()
        self._update_modified()

    def try_update(self, section: str, **changes: Any) -> str | None:
        """Change fields of one section (``"lora"``, ``"training"``...); return the validation
        message instead of raising, so a form can show it beside the field. None when accepted."""
        try:
            new_section = dataclasses.replace(getattr(self.config, section), **changes)
            new_config = dataclasses.replace(self.config, **{section: new_section})
        except (ValueError, TypeError) as exc:
            return str(exc)
        self.set_config(new_config)
        return None

    def set_lora(self, lora: LoraConfig) -> None:
        """Replace the LoRA section (e.g. from the layer tree's selection)."""
        self.set_config(dataclasses.replace(self.config, lora=lora))

    def set_targets(self, targets: list[str] | str) -> None:
        """Adapt exactly these layers (explicit names or a regex); ``exclude`` and ``layers``
        are cleared because explicit names already say everything the tree shows."""
        if isinstance(targets, list) and not targets:
            targets = NO_LAYERS
        self.set_lora(self.config.lora.replace(targets=targets, exclude=None, layers=None))

    def training_lora(self) -> LoraConfig:
        """The LoRA section as the trainer applies it: the model's head, when it has one, is
        added to ``modules_to_save`` (it learns the user's classes), by core's own rule."""
        return training_lora_config(self.config.lora, self.head)

    # -- validity: what the Start button reads ------------------------------------------------------
    def set_field_error(self, key: str, message: str | None) -> None:
        """Record (or clear, with None) the refusal of a value typed into field ``key``."""
        if message:
            self.field_errors[key] = message
        else:
            self.field_errors.pop(key, None)
        self._update_validity()

    def clear_field_errors(self) -> None:
        """Forget every refused typed value (a project was opened: the forms show it afresh)."""
        self.field_errors.clear()
        self._update_validity()

    @property
    def config_error(self) -> str | None:
        """The first reason the config cannot start a run, or None."""
        if self.field_errors:
            return next(iter(self.field_errors.values()))
        if self._pending is not None:
            return LOADING
        if self.browse_model is None:
            return NO_MODEL
        if self.loaded is None:
            return f"The model did not load: {self.load_error}" if self.load_error else LOADING
        problem = data_problem(self.config.data, self.config.model, self.task or self.loaded.task)
        if problem:
            return problem
        preview = self.preview()
        return preview.error if preview is not None else None

    def is_valid(self) -> bool:
        """True when a run can start with this config (see the module docstring)."""
        return self.config_error is None

    # -- the model --------------------------------------------------------------------------------
    @property
    def browse_model(self) -> Any:
        """The model the tree describes: the loaded base, else its meta-device twin, else None."""
        return self.loaded.model if self.loaded is not None else self.meta_model

    def begin_model_change(self, model: ModelConfig, *, exact: RunConfig | None = None) -> None:
        """Model ``model`` starts loading; when its build arrives (:meth:`set_meta_model`) the config
        becomes ``exact`` (a project being opened, an undo) or what the carry-over rule makes of
        the current one.  Until then the config cannot start a run."""
        self._pending = _PendingChange(model, copy.deepcopy(exact) if exact is not None else None,
                                       copy.deepcopy(self.config), self.targeted_names())
        self._update_validity()

    def set_meta_model(self, model: Any, head: str | None = None, task: str | None = None) -> None:
        """Show a meta-device build at once, before the weights arrive (``head``: its classifier,
        ``task``: what it does); a pending model change is applied to the config now."""
        self.meta_model = model
        self.loaded = None
        self.head = head
        self.load_error = None
        pending, self._pending = self._pending, None
        if pending is None:
            self._refresh_tree()
            self._update_validity()
            return
        self.task = task or ("image-classification" if pending.model.source != "transformers" else None)
        self.facts = facts = model_facts(model, head, self.task or "image-classification")
        new_defaults = defaults_for(pending.model, facts)
        notice = ""
        if pending.exact is not None:
            config = pending.exact.replace(model=pending.model)
            self.undo_config = None
        else:
            change = carry_over(pending.old, self.model_defaults, pending.old_targeted, new_defaults, facts)
            config, notice = change.config, change.notice()
            self.undo_config = pending.old
        self.model_defaults = new_defaults
        was_modified = self._modified
        self.set_config(config)
        if not was_modified and self.project_path is None and pending.exact is None:
            self.mark_saved()  # a fresh window that loads a model holds no work of the user's yet
        self.sig_model_notice.emit(notice)

    def set_loaded(self, loaded: LoadedModel) -> None:
        """The model finished loading (its base, without adapters)."""
        if self._pending is not None:  # no meta build came first (a caller that loads directly)
            self.set_meta_model(loaded.model, loaded.head, loaded.task)
        self.loaded = loaded
        self.head = loaded.head
        self.task = loaded.task
        self._refresh_tree()
        self.sig_model_loaded.emit(loaded)
        self._update_validity()

    def undo_model_change(self) -> RunConfig | None:
        """The config from before the last model change (its ``[model]`` is the one to load again,
        with this config taken as it is), or None when there is nothing to undo."""
        config, self.undo_config = self.undo_config, None
        self.sig_model_notice.emit("")
        return config

    def targeted_names(self) -> list[str]:
        """The layers the config adapts on the model shown, in model order."""
        return [n.name for n in self.tree.walk() if n.targeted] if self.tree is not None else []

    def fresh_config(self) -> RunConfig:
        """A new project's config: what the model on screen comes with (its demo's, or the defaults
        with targets for it), in a run folder named after it."""
        return copy.deepcopy(self.model_defaults) if self.model_defaults.model == self.config.model else \
            defaults_for(self.config.model, self.facts)

    def open_config(self, config: RunConfig, path: Path | None, *, saved: bool = True) -> bool:
        """Edit ``config`` (a project opened from ``path``, or restored): field errors cleared,
        marked saved unless ``saved`` is False.  Returns True when its model must be loaded
        (another model than the one on screen); the caller then loads it with ``exact=config``."""
        same_model = config.model == self.config.model and self.browse_model is not None
        if same_model:
            self.model_defaults = defaults_for(config.model, self.facts)
        self.set_config(config)
        self.clear_field_errors()
        self.set_project_path(path)
        if saved:
            self.mark_saved()
        return not same_model

    # -- unsaved work ---------------------------------------------------------------------------------
    def is_modified(self) -> bool:
        """The config differs from the one last saved or opened."""
        return self._modified

    def mark_saved(self) -> None:
        """The config as it is now was saved (or opened, or is a fresh start): not modified."""
        self._saved = copy.deepcopy(self.config)
        self._update_modified()

    def _update_modified(self) -> None:
        modified = self.config != self._saved
        if modified != self._modified:
            self._modified = modified
            self.sig_modified_changed.emit(modified)

    def _load_failed(self, message: str) -> None:
        # The last model stays on screen with its config when the failure came before the build;
        # after it, the tree shows a model without weights, which cannot train.
        self._pending = None
        if self.loaded is None and self.meta_model is not None:
            self.load_error = message
        self._update_validity()

    def preview(self) -> TargetPreview | None:
        """What the LoRA section targets on the current model (None with no model)."""
        model = self.browse_model
        return preview_targets(model, self.training_lora()) if model is not None else None

    def training_copy(self) -> RunConfig:
        """A deep copy of the config for a run (the run must not see later edits)."""
        return copy.deepcopy(self.config)

    def set_project_path(self, path: Path | None) -> None:
        """The project file the config was opened from or saved to."""
        self.project_path = path
        self.sig_project_changed.emit(path)

    def _refresh_tree(self) -> None:
        model = self.browse_model
        if model is None:
            return
        self.tree = describe(model, self.training_lora())
        self.sig_tree_changed.emit(self.tree)

    def _update_validity(self) -> None:
        message = self.config_error
        state = (message is None, message or "")
        if state != self._validity:
            self._validity = state
            self.sig_validity_changed.emit(*state)
