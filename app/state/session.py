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
Start button subscribes instead of polling.
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
    ModuleInfo,
    RunConfig,
    TargetPreview,
    describe,
    preview_targets,
    training_lora_config,
)

NO_LAYERS = "(?!)"
"""The ``targets`` regex that matches no layer: what "tick nothing" writes (an empty list is refused)."""


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

    def __init__(self, config: RunConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config: RunConfig = config or RunConfig()
        self.loaded: LoadedModel | None = None  # the base model, with weights, no adapter attached
        self.meta_model: Any = None  # the same architecture on the meta device, shown while loading
        self.head: str | None = None  # the model's classifier head: the trainer trains it fully
        self.tree: ModuleInfo | None = None
        self.project_path: Path | None = None
        self.field_errors: dict[str, str] = {}  # "section.field" -> message of a refused typed value
        self._validity: tuple[bool, str] = (True, "")

    # -- the config -------------------------------------------------------------------------------
    def set_config(self, config: RunConfig) -> None:
        """Replace the run config (already validated: dataclasses validate on construction)."""
        self.config = config
        self._refresh_tree()
        self.sig_config_changed.emit(config)
        self._update_validity()

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

    def set_meta_model(self, model: Any, head: str | None = None) -> None:
        """Show a meta-device build at once, before the weights arrive (``head``: its classifier)."""
        self.meta_model = model
        self.loaded = None
        self.head = head
        self._refresh_tree()
        self._update_validity()

    def set_loaded(self, loaded: LoadedModel) -> None:
        """The model finished loading (its base, without adapters)."""
        self.loaded = loaded
        self.head = loaded.head
        self._refresh_tree()
        self.sig_model_loaded.emit(loaded)
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
