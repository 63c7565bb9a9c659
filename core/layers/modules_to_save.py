"""Fully trained copies of chosen modules (e.g. a new classifier head), one per adapter.

Mirrors PEFT's ``ModulesToSaveWrapper``: the untouched module stays as
``original_module``; each adapter trains its own copy in ``modules_to_save``.
"""

from __future__ import annotations

import copy

from torch import nn


class ModulesToSave(nn.Module):
    """Routes forward to the active adapter's copy, or to the original when none is active."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module.requires_grad_(False)
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.adapters_disabled = False

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def add_adapter(self, adapter: str) -> None:
        self.modules_to_save[adapter] = copy.deepcopy(self.original_module).requires_grad_(True)

    def delete_adapter(self, adapter: str) -> None:
        del self.modules_to_save[adapter]
        if self.active_adapter == adapter:
            self.active_adapter = None

    def set_active(self, adapter: str | None) -> None:
        self.active_adapter = adapter if adapter in self.modules_to_save else None
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == self.active_adapter)

    def current(self) -> nn.Module:
        """The module forward uses now."""
        if self.adapters_disabled or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.current(), name)
