"""Settings: the LoRA variant (from the registry, with its description and its own generated form),
rank, alpha, dropout, init, the training basics (learning rate, steps, batch size, gradient
accumulation, precision, device), and the samples shown at each evaluation (``[samples]``: prompts
for a language model, one per line; how many validation examples a classifier labels).

The Device row lists this machine's devices (core's ``available_devices``): Auto, CPU, each GPU
by index and name, Apple's GPU when MPS is there, and "All GPUs (N)" with several CUDA devices,
which sets ``device = "cuda"`` and ``processes = N`` (a launch under torchrun); the DDP/FSDP row
shows only then.

Every field is validated as the user types by the config's own rules (``session.try_update``);
the message appears beside the field and a refused value blocks Start
(``session.is_valid()``/``sig_validity_changed``).  The forms are generated: the variant's from
``Variant.settings_fields()``, the rest from the dataclasses' field help notes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    DISTRIBUTED_STRATEGIES,
    INIT_CHOICES,
    PRECISIONS,
    DeviceInfo,
    LoraConfig,
    RunConfig,
    SamplesConfig,
    SettingField,
    TrainingConfig,
    available_devices,
    available_variants,
    get_variant,
)

from ..state.run_controller import pause_note
from ..state.session import StudioSession
from .settings_form import FieldRow, error_message

# (field, label, type) of the LoRA and training sections shown in the form, in this order.
LORA_FIELDS = (("r", "Rank", "int"), ("alpha", "Alpha", "float"), ("dropout", "Dropout", "float"))
TRAINING_FIELDS = (
    ("lr", "Learning rate", "float"),
    ("max_steps", "Steps", "int"),
    ("batch_size", "Batch size", "int"),
    ("grad_accumulation", "Grad. accumulation", "int"),
)
SAMPLES_FIELDS = (("count", "Examples", "int"), ("max_new_tokens", "New tokens", "int"),
                  ("temperature", "Temperature", "float"))
STRATEGY_TITLES = {  # training.distributed -> (what the Parallelism row shows, its tooltip)
    "ddp": ("DDP", "DistributedDataParallel: a whole copy of the model on each device, gradients averaged"),
    "fsdp": ("FSDP", "Fully sharded: each device holds a shard of every transformer block (models larger than "
                     "one device)"),
}
assert set(STRATEGY_TITLES) == set(DISTRIBUTED_STRATEGIES)


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the Device list: what it shows and the two fields it sets."""

    label: str
    device: str  # training.device
    processes: int  # training.processes
    tooltip: str = ""


def device_choices(devices: list[DeviceInfo]) -> list[DeviceChoice]:
    """The Device list for this machine's ``devices`` (``available_devices()``), in order."""
    gpus = [d for d in devices if d.kind == "cuda"]
    auto = gpus[0] if gpus else next((d for d in devices if d.kind == "mps"), None)
    picks = device_label(auto) if auto is not None else "the CPU"
    choices = [DeviceChoice("Auto", "auto", 1, f"CUDA, then Apple's GPU, then the CPU: here {picks}")]
    for device in devices:
        tooltip = "Trains in this process" + (" (a gloo CPU process)" if device.kind == "cpu" else "")
        choices.append(DeviceChoice(device_label(device), device.device, 1, tooltip))
    if len(gpus) > 1:
        choices.append(DeviceChoice(
            f"All GPUs ({len(gpus)})", "cuda", len(gpus),
            f"{len(gpus)} processes launched under torchrun, one per GPU (0..{len(gpus) - 1}), sharing the model "
            "by DDP or FSDP; the batch size is over all of them"))
    return choices


def device_label(device: DeviceInfo) -> str:
    """'GPU 0 — NVIDIA H200 (140 GiB)', 'Apple GPU', 'CPU'."""
    if device.kind != "cuda":
        return device.name
    memory = f" ({device.total_memory / 2**30:.0f} GiB)" if device.total_memory else ""
    return f"GPU {device.index} — {device.name}{memory}"


def other_device_label(device: str, processes: int, devices: list[DeviceInfo]) -> str:
    """The Device list's entry for a config's value the list does not offer (a project from
    another machine): 'cuda:3 — not on this machine', 'CPU × 2 processes'."""
    names = {"auto": "Auto", "cpu": "CPU", "mps": "Apple GPU", "cuda": "GPUs"}
    here = {d.device for d in devices} | {"auto", "cpu"}
    if any(d.kind == "cuda" for d in devices):
        here.add("cuda")
    text = names.get(device, device) + (f" × {processes} processes" if processes > 1 else "")
    return text if device in here else f"{text} — not on this machine"


class DeviceRow(QWidget):
    """The Device row: one choice among this machine's devices, setting ``training.device`` and
    ``training.processes`` together (so "All GPUs" and back never passes through a refused pair)."""

    def __init__(self, session: StudioSession, devices: list[DeviceInfo], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.key = session, "training.device"
        self.devices = devices
        self.choices = device_choices(devices)
        self.editor = QComboBox()
        self.editor.setObjectName("device_choice")
        self.editor.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.editor.setMinimumContentsLength(12)  # long GPU names elide instead of widening the dock
        for index, choice in enumerate(self.choices):
            self.editor.addItem(choice.label, choice)
            self.editor.setItemData(index, choice.tooltip, Qt.ItemDataRole.ToolTipRole)
        self.editor.setToolTip(_help(TrainingConfig, "device"))
        self.message = error_message()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.editor, 1)
        layout.addWidget(self.message, 2)
        self._updating = False
        self.editor.currentIndexChanged.connect(self._commit)
        self.refresh()

    def choose(self, label: str) -> None:
        """Pick the entry showing ``label`` (as a user does)."""
        index = self.editor.findText(label)
        if index < 0:
            raise ValueError(f"no device {label!r}; the list has {[c.label for c in self.choices]}")
        self.editor.setCurrentIndex(index)

    def current(self) -> DeviceChoice:
        """The entry shown."""
        return self.editor.currentData()

    def refresh(self) -> None:
        """Show the config's device and process count (an entry of its own when the list lacks them)."""
        training = self.session.config.training
        wanted = (training.device, training.processes)
        self._updating = True
        try:
            while self.editor.count() > len(self.choices):  # an earlier config's own entry
                self.editor.removeItem(self.editor.count() - 1)
            index = next((i for i, c in enumerate(self.choices) if (c.device, c.processes) == wanted), -1)
            if index < 0:
                other = DeviceChoice(other_device_label(*wanted, self.devices), *wanted, "From the project file")
                self.editor.addItem(other.label, other)
                index = self.editor.count() - 1
            self.editor.setCurrentIndex(index)
        finally:
            self._updating = False
        self._show(None)

    def retry(self) -> None:
        """Commit the entry shown again (a refusal may have depended on another field)."""
        self._commit()

    def error(self) -> str | None:
        """The message shown beside the row, or None."""
        return self.message.text() if self.message.isVisibleTo(self) else None

    def _commit(self, *_args: object) -> None:
        if self._updating:
            return
        choice = self.current()
        message = self.session.try_update("training", device=choice.device, processes=choice.processes)
        self._show(message)
        self.session.set_field_error(self.key, message)

    def _show(self, message: str | None) -> None:
        self.message.setText(message or "")
        self.message.setVisible(bool(message))


def _help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


class SettingsPanel(QWidget):
    """Variant, adapter and training settings, as generated forms over the session's config."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.rows: dict[str, FieldRow] = {}  # "section.field" (or "lora.variant_settings.x") -> row
        self._retrying = False

        self.variant_combo = QComboBox()
        for variant in available_variants():
            self.variant_combo.addItem(variant.title or variant.name, variant.name)
        self.variant_combo.setToolTip(_help(LoraConfig, "variant"))
        self.variant_description = QLabel()
        self.variant_description.setWordWrap(True)
        self.variant_description.setTextFormat(Qt.TextFormat.RichText)
        self.variant_form_box = QGroupBox("Variant settings")
        self.variant_form = QFormLayout(self.variant_form_box)

        adapter_box = QGroupBox("Adapter")
        adapter_form = QFormLayout(adapter_box)
        adapter_form.addRow("Variant", self.variant_combo)
        adapter_form.addRow(self.variant_description)
        for name, label, type_name in LORA_FIELDS:
            adapter_form.addRow(label, self._row("lora", name, type_name, LoraConfig))
        adapter_form.addRow("Init", self._row("lora", "init", "str", LoraConfig, choices=INIT_CHOICES))
        adapter_form.addRow("rsLoRA scaling", self._row("lora", "use_rslora", "bool", LoraConfig))

        training_box = QGroupBox("Training")
        training_form = QFormLayout(training_box)
        for name, label, type_name in TRAINING_FIELDS:
            training_form.addRow(label, self._row("training", name, type_name, TrainingConfig))
        training_form.addRow(
            "Precision", self._row("training", "precision", "str", TrainingConfig, choices=PRECISIONS)
        )
        self.device_row = DeviceRow(session, available_devices())
        self.rows["training.device"] = self.device_row  # type: ignore[assignment] - a row like the others
        training_form.addRow("Device", self.device_row)
        # Shown only with several processes (the layout test reaches every row in ``rows``: not this one).
        self.strategy_combo = QComboBox()
        self.strategy_combo.setObjectName("distributed_choice")
        for index, name in enumerate(DISTRIBUTED_STRATEGIES):
            title, tooltip = STRATEGY_TITLES[name]
            self.strategy_combo.addItem(title, name)
            self.strategy_combo.setItemData(index, tooltip, Qt.ItemDataRole.ToolTipRole)
        self.strategy_combo.setToolTip(_help(TrainingConfig, "distributed"))
        self.strategy_combo.currentIndexChanged.connect(self._strategy_chosen)
        self.launch_note = QLabel()
        self.launch_note.setObjectName("launch_note")
        self.launch_note.setWordWrap(True)
        self.launch_note.setStyleSheet("color: palette(placeholder-text)")
        training_form.addRow("Parallelism", self.strategy_combo)
        training_form.addRow(self.launch_note)
        self.training_form = training_form

        samples_box = QGroupBox("Samples at each evaluation")
        samples_form = QFormLayout(samples_box)
        self.prompts_edit = QPlainTextEdit()
        self.prompts_edit.setObjectName("samples_prompts")
        self.prompts_edit.setPlaceholderText("Language models: one prompt per line")
        self.prompts_edit.setToolTip(_help(SamplesConfig, "prompts"))
        self.prompts_edit.setFixedHeight(3 * self.fontMetrics().lineSpacing() + 12)
        self.prompts_edit.textChanged.connect(self._prompts_typed)
        samples_form.addRow("Prompts", self.prompts_edit)
        for name, label, type_name in SAMPLES_FIELDS:
            samples_form.addRow(label, self._row("samples", name, type_name, SamplesConfig))

        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.addWidget(adapter_box)
        content_layout.addWidget(self.variant_form_box)
        content_layout.addWidget(training_box)
        content_layout.addWidget(samples_box)
        content_layout.addStretch(1)
        # The form scrolls inside the dock: on a 720-pixel-high screen the training fields sit below
        # the fold, and a row with its message beside it may be wider than a narrow dock.
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

        self._shown_variant: str | None = None
        self.variant_combo.currentIndexChanged.connect(self._variant_chosen)
        session.sig_config_changed.connect(self._config_changed)
        self._config_changed(session.config)

    # -- public API ----------------------------------------------------------------------------------
    def row(self, key: str) -> FieldRow:
        """The form row editing ``key`` ('lora.r', 'training.lr', 'lora.variant_settings.<name>'...)."""
        return self.rows[key]

    def reveal(self, key: str) -> FieldRow:
        """Scroll the form until the row editing ``key`` is in view; returns the row."""
        row = self.rows[key]
        self.scroll.ensureWidgetVisible(row, 8, 8)
        return row

    def shows_strategy(self) -> bool:
        """Whether the DDP/FSDP row is shown (only for a run over several processes)."""
        return self.training_form.isRowVisible(self.strategy_combo)

    def set_variant(self, name: str) -> None:
        """Choose variant ``name`` (as picking it in the list does)."""
        self.variant_combo.setCurrentIndex(self.variant_combo.findData(name))

    # -- building rows -------------------------------------------------------------------------------
    def _row(self, section: str, name: str, type_name: str, cls: type, *, choices: tuple[Any, ...] | None = None,
             editable: bool = False) -> FieldRow:
        key = f"{section}.{name}"
        row = FieldRow(
            self.session, key, type_name,
            read=lambda: getattr(getattr(self.session.config, section), name),
            write=lambda value: self.session.try_update(section, **{name: value}),
            choices=choices, help_text=_help(cls, name), editable_choices=editable,
        )  # fmt: skip
        self.rows[key] = row
        return row

    def _variant_row(self, field: SettingField) -> FieldRow:
        key = f"lora.variant_settings.{field.name}"

        def read() -> Any:
            return self.session.config.lora.variant_settings.get(field.name, field.default)

        def write(value: Any) -> str | None:
            settings = {**self.session.config.lora.variant_settings, field.name: value}
            return self.session.try_update("lora", variant_settings=settings)

        type_name = field.type_name if field.type_name in ("int", "float", "bool") else "str"
        row = FieldRow(self.session, key, type_name, read, write, choices=field.choices, help_text=field.help)
        self.rows[key] = row
        return row

    def _rebuild_variant_form(self, variant_name: str) -> None:
        for key in [k for k in self.rows if k.startswith("lora.variant_settings.")]:
            self.session.set_field_error(key, None)
            del self.rows[key]
        while self.variant_form.rowCount():
            self.variant_form.removeRow(0)
        variant = get_variant(variant_name)
        fields = variant.settings_fields()
        for field in fields:
            self.variant_form.addRow(field.name.replace("_", " ").capitalize(), self._variant_row(field))
        self.variant_form_box.setVisible(bool(fields))
        paper = f"<br><i>{variant.paper}</i>" if variant.paper else ""
        merge = "" if variant.can_merge else "<br><b>Cannot be merged into the base</b> (kept as an adapter)."
        self.variant_description.setText(f"{variant.description}{paper}{merge}")
        self._shown_variant = variant_name

    # -- reacting ---------------------------------------------------------------------------------
    def _prompts_typed(self) -> None:
        prompts = prompt_lines(self.prompts_edit.toPlainText())
        if prompts != self.session.config.samples.prompts:
            self.session.try_update("samples", prompts=prompts)

    def _variant_chosen(self, _index: int) -> None:
        name = self.variant_combo.currentData()
        if name and name != self.session.config.lora.variant:
            # A new variant starts from its own defaults: the old one's settings mean nothing to it.
            self.session.try_update("lora", variant=name, variant_settings={})

    def _strategy_chosen(self, _index: int) -> None:
        name = self.strategy_combo.currentData()
        if name and name != self.session.config.training.distributed:
            self.session.try_update("training", distributed=name)

    def _show_processes(self, config: RunConfig) -> None:
        processes = config.training.processes
        several = processes > 1
        self.training_form.setRowVisible(self.strategy_combo, several)
        self.training_form.setRowVisible(self.launch_note, several)
        self.strategy_combo.blockSignals(True)
        self.strategy_combo.setCurrentIndex(self.strategy_combo.findData(config.training.distributed))
        self.strategy_combo.blockSignals(False)
        if several:
            self.launch_note.setText(f"{processes} processes launched under torchrun. Pause saves a checkpoint "
                                     "and stops them; Resume relaunches them from it.")
            self.launch_note.setToolTip(pause_note(processes))

    def _config_changed(self, config: RunConfig) -> None:
        self._show_processes(config)
        if config.lora.variant != self._shown_variant:
            self.variant_combo.blockSignals(True)
            self.variant_combo.setCurrentIndex(self.variant_combo.findData(config.lora.variant))
            self.variant_combo.blockSignals(False)
            self._rebuild_variant_form(config.lora.variant)
        for row in self.rows.values():
            row.refresh()
        if prompt_lines(self.prompts_edit.toPlainText()) != config.samples.prompts:  # not while the user types
            self.prompts_edit.blockSignals(True)
            self.prompts_edit.setPlainText("\n".join(config.samples.prompts))
            self.prompts_edit.blockSignals(False)
        self._retry_refused_rows()

    def _retry_refused_rows(self) -> None:
        # A refusal may depend on another field (batch size must be a multiple of grad accumulation):
        # when the config changes, a refused value gets another chance.
        if self._retrying:
            return
        self._retrying = True
        try:
            for key, row in list(self.rows.items()):
                if key in self.session.field_errors:
                    row.retry()
        finally:
            self._retrying = False


def prompt_lines(text: str) -> list[str]:
    """The prompts a text box holds: one per non-blank line, as typed (leading spaces matter to a prompt)."""
    return [line for line in text.splitlines() if line.strip()]
