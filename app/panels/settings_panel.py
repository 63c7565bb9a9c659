"""Settings: the LoRA variant (from the registry, with its description and its own generated form),
rank, alpha, dropout, init, the training basics (learning rate, steps, batch size, gradient
accumulation, precision, device), and the samples shown at each evaluation (``[samples]``: prompts
for a language model, one per line; how many validation examples a classifier labels).

Every field is validated as the user types by the config's own rules (``session.try_update``);
the message appears beside the field and a refused value blocks Start
(``session.is_valid()``/``sig_validity_changed``).  The forms are generated: the variant's from
``Variant.settings_fields()``, the rest from the dataclasses' field help notes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPlainTextEdit,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    DEVICE_CHOICES,
    INIT_CHOICES,
    PRECISIONS,
    LoraConfig,
    RunConfig,
    SamplesConfig,
    SettingField,
    TrainingConfig,
    available_variants,
    get_variant,
)

from ..state.session import StudioSession
from .settings_form import FieldRow

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
        training_form.addRow(
            "Device", self._row("training", "device", "str", TrainingConfig, choices=DEVICE_CHOICES, editable=True)
        )

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

    def _config_changed(self, config: RunConfig) -> None:
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
