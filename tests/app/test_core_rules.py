"""The window offers and previews exactly what the engine does: its pickers list core's choices,
its "trained fully" marks and device figures come from core's own functions (the export dialog's
precisions are checked in test_export_dialog.py)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox
from torch import nn

from lora_studio.app.panels.data_panel import DataPanel
from lora_studio.app.panels.model_panel import CHECKPOINT, ModelPanel
from lora_studio.app.panels.settings_panel import SettingsPanel, device_choices
from lora_studio.app.resources import THEMES as RESOURCE_THEMES
from lora_studio.app.state.counts_estimate import device_memory
from lora_studio.app.state.project_files import THEMES
from lora_studio.app.state.session import StudioSession
from lora_studio.app.widgets.layer_tree_model import LayerTreeModel
from lora_studio.core import (
    DATA_KINDS,
    INIT_CHOICES,
    MODEL_SOURCES,
    PRECISIONS,
    TASKS,
    LoraConfig,
    ModelConfig,
    available_devices,
    describe,
    device_description,
    device_total_memory,
    in_modules_to_save,
    resolve_device,
)


def _items(combo: QComboBox, role: Qt.ItemDataRole = Qt.ItemDataRole.DisplayRole) -> list:
    return [combo.itemData(i, role) for i in range(combo.count())]


def test_settings_offer_cores_choices(qtbot) -> None:
    panel = SettingsPanel(StudioSession())
    qtbot.addWidget(panel)
    assert _items(panel.row("lora.init").editor) == list(INIT_CHOICES)
    assert _items(panel.row("training.precision").editor) == list(PRECISIONS)
    # The devices this machine has, as core reports them (not the config's spellings, DEVICE_CHOICES).
    assert _items(panel.row("training.device").editor) == [c.label for c in device_choices(available_devices())]


def test_model_and_data_pickers_offer_cores_sources_tasks_and_kinds(qtbot) -> None:
    session = StudioSession()
    model_panel, data_panel = ModelPanel(session), DataPanel(session)
    qtbot.addWidget(model_panel)
    qtbot.addWidget(data_panel)
    sources = _items(model_panel.source_combo, Qt.ItemDataRole.UserRole)
    assert sources[0] == "demo" and sorted(sources) == sorted([*MODEL_SOURCES, CHECKPOINT])
    assert _items(model_panel.hf_task) == list(TASKS)
    assert model_panel.hf_task.currentText() == "sequence-classification"
    assert _items(data_panel.kind_combo, Qt.ItemDataRole.UserRole) == list(DATA_KINDS)


def test_checkpoint_page_reads_cores_model_spec(qtbot) -> None:
    panel = ModelPanel(StudioSession())
    qtbot.addWidget(panel)
    panel.select_source(CHECKPOINT)
    panel.ckpt_file.edit.setText("w.safetensors")
    for arch, expected in [
        ("torchvision:resnet18", ModelConfig(source="torchvision", name="resnet18", weights="w.safetensors")),
        ("python:net.py:build", ModelConfig(source="python", name="net.py:build", checkpoint="w.safetensors")),
        ("net.py:build", ModelConfig(source="python", name="net.py:build", checkpoint="w.safetensors")),
    ]:
        panel.ckpt_arch.setText(arch)
        assert panel.model_config_from_page() == expected
    panel.ckpt_arch.setText("demo:digits")
    with pytest.raises(ValueError, match="torchvision or python"):
        panel.model_config_from_page()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.inner = nn.Module()
        self.inner.head = nn.Linear(4, 4)  # ends in ".head": core trains it fully too


def test_tree_marks_trained_fully_what_core_trains_fully(qtbot) -> None:
    config = LoraConfig(targets="all-linear", modules_to_save=["head"])
    model = LayerTreeModel(lambda names, tick: None)
    model.set_tree(describe(_Net(), config), config.modules_to_save)
    assert model.tickable_names() == ["body"]
    for name in ("body", "head", "inner.head"):
        tooltip = model.data(model.index_of(name), Qt.ItemDataRole.ToolTipRole)
        assert ("trained fully" in tooltip) == in_modules_to_save(config, name)


def test_device_figures_follow_the_trainers_choice() -> None:
    chosen = resolve_device("auto")
    assert device_memory("auto") == (device_description(chosen), device_total_memory(chosen))
    assert device_memory("cpu")[0] == "CPU (system memory)"


def test_one_theme_list() -> None:
    assert RESOURCE_THEMES is THEMES
