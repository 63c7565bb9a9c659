"""The window's one piece of state: the run config being edited, and the model it describes.

Widgets read from and write to a :class:`StudioSession`; they never keep a second copy
of the configuration (ARCHITECTURE.md: "the window edits a config; it does not keep a
parallel state").  Every change goes through :meth:`StudioSession.set_config`, which
validates by rebuilding the dataclasses and emits ``sig_config_changed``.
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

    def __init__(self, config: RunConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config: RunConfig = config or RunConfig()
        self.loaded: LoadedModel | None = None  # the base model, with weights, no adapter attached
        self.meta_model: Any = None  # the same architecture on the meta device, shown while loading
        self.tree: ModuleInfo | None = None
        self.project_path: Path | None = None

    # -- the config -------------------------------------------------------------------------------
    def set_config(self, config: RunConfig) -> None:
        """Replace the run config (already validated: dataclasses validate on construction)."""
        self.config = config
        self._refresh_tree()
        self.sig_config_changed.emit(config)

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

    # -- the model --------------------------------------------------------------------------------
    @property
    def browse_model(self) -> Any:
        """The model the tree describes: the loaded base, else its meta-device twin, else None."""
        return self.loaded.model if self.loaded is not None else self.meta_model

    def set_meta_model(self, model: Any) -> None:
        """Show a meta-device build at once, before the weights arrive."""
        self.meta_model = model
        self._refresh_tree()

    def set_loaded(self, loaded: LoadedModel) -> None:
        """The model finished loading (its base, without adapters)."""
        self.loaded = loaded
        self._refresh_tree()
        self.sig_model_loaded.emit(loaded)

    def preview(self) -> TargetPreview | None:
        """What the LoRA section targets on the current model (None with no model)."""
        model = self.browse_model
        return preview_targets(model, self.config.lora) if model is not None else None

    def training_copy(self) -> RunConfig:
        """A deep copy of the config for a run (the run must not see later edits)."""
        return copy.deepcopy(self.config)

    def _refresh_tree(self) -> None:
        model = self.browse_model
        if model is None:
            return
        self.tree = describe(model, self.config.lora)
        self.sig_tree_changed.emit(self.tree)
