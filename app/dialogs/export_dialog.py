"""Export a trained adapter (PEFT format) or a merged model, and prove the export right.

After writing, the dialog reloads what it wrote — the adapter onto a plain copy of the
base, the merged weights into the original architecture — runs one fixed batch (core's
:func:`export_example_inputs`: the first validation samples) through it and through the
live model, and shows the largest difference.  Writing and checking run on a
:class:`FunctionWorker`; the dialog stays responsive and shows what it is doing.

A variant that cannot merge (``Variant.can_merge`` False) keeps "Export merged" greyed
with its reason; one that merges for a chosen input (``Variant.merge_inputs``, e.g. a
task id) asks for it.

GGUF (llama.cpp, Ollama): the merged model or the adapter, read back with ``gguf``'s reader and
compared with what it should hold (``verify_gguf``); greyed with the reason for an architecture
GGUF export does not write.  Hugging Face Hub: the last run's adapter or merged model with its
model card (``push_run``), on the same worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    EXPORT_PRECISIONS,
    GGUF_TOLERANCE,
    GGUF_TYPES,
    LoadedModel,
    PushResult,
    active_adapter,
    export_example_inputs,
    export_gguf,
    export_gguf_adapter,
    export_merged,
    get_adapter_config,
    get_variant,
    gguf_problem,
    list_adapters,
    push_run,
    record_verification,
    save_adapter,
    verify_adapter,
    verify_export,
    verify_gguf,
)

from ..state.project_files import StudioSettings
from ..state.run_controller import RunController
from ..state.session import StudioSession
from ..state.workers import FunctionWorker
from ..widgets.form_rows import row

# Largest output difference an export may show and still count as faithful: float32 only
# reorders sums; half precisions round every weight (bfloat16 keeps 8 bits of mantissa).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-1,
             # GGUF files are checked tensor by tensor, relative to each tensor's largest magnitude: core's
             # bound per stored type (the type's own rounding).
             **{f"gguf-{kind}": bound for kind, bound in GGUF_TOLERANCE.items()}}


@dataclass(frozen=True)
class ExportCheck:
    """One export, written and checked."""

    what: str  # "adapter" or "merged"
    path: Path
    precision: str
    difference: float  # largest |reloaded - live| output on the check batch (GGUF: relative, per tensor)
    samples: int  # samples in the check batch (GGUF: tensors compared)
    unit: str = "samples"

    @property
    def within_tolerance(self) -> bool:
        """Whether the difference is small enough for the precision (see TOLERANCE)."""
        return self.difference <= TOLERANCE[self.precision]


def parse_merge_input(text: str) -> Any:
    """A merge input typed by the user: an integer (a task id), a number, or a comma-separated vector."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("a value is needed")
    if len(parts) == 1:
        return int(parts[0]) if parts[0].lstrip("-").isdigit() else float(parts[0])
    return torch.tensor([float(p) for p in parts])


def format_merge_input(value: Any) -> str:
    """The text form of a merge input (the inverse of :func:`parse_merge_input`)."""
    if isinstance(value, torch.Tensor):
        return ", ".join(f"{v:g}" for v in value.flatten().tolist()) if value.dim() else f"{value.item():g}"
    return str(value)


class ExportDialog(QDialog):
    """Write the adapter or a merged model of ``model`` (base + adapter), then check it."""

    sig_exported = Signal(object)
    """An export was written and checked (payload: ExportCheck)."""
    sig_export_failed = Signal(str)
    """Writing or checking failed (payload: the message shown)."""

    def __init__(self, session: StudioSession, model: Any = None, parent: QWidget | None = None, *,
                 example_inputs: Any = None) -> None:
        super().__init__(parent)
        self.session = session
        # RunPanel.trained_model() hands a LoadedModel (its tokenizer and forward style come along);
        # a bare nn.Module with an adapter works too, with the session's loaded model for those.
        self.trained = model if isinstance(model, LoadedModel) else None
        self.model = model.model if isinstance(model, LoadedModel) else model  # base + adapter, to export
        self.example_inputs = example_inputs  # the check batch; made from the run's data when first needed
        self.last_check: ExportCheck | None = None
        self._worker: FunctionWorker | None = None
        self.adapter_name = _adapter_name(self.model)
        config = get_adapter_config(self.model, self.adapter_name) if self.adapter_name else None
        self.variant = get_variant(config.variant) if config is not None else None
        self.setWindowTitle("Export")
        self.setMinimumWidth(620)
        self._build()
        self._set_busy(False)

    # -- public API -------------------------------------------------------------------------------------
    def export_adapter(self, folder: str | None = None) -> None:
        """Write the adapter in PEFT's format to ``folder`` (default: the path field), then check it."""
        folder = folder or self.adapter_path.text().strip()
        model, name = self.model, self.adapter_name
        labels = self.trained.label_names if self.trained is not None else None
        summary = {"label_names": labels} if labels else None  # `lora-studio predict` and Try name the classes
        base = self.trained.name_or_path if self.trained is not None else None  # so the folder opens on its own

        def work(on_event: Any) -> ExportCheck:
            inputs = self._check_inputs()
            on_event(f"writing the adapter to {folder}…")
            written = save_adapter(model, folder, name, run_summary=summary, base_model_name_or_path=base or None)
            on_event("reloading it onto the base and running the check batch…")
            return ExportCheck("adapter", written, "float32", verify_adapter(folder, model, inputs, name),
                               _batch_size(inputs))

        self._run(work)

    def export_merged_model(self, path: str | None = None) -> None:
        """Merge and write the model (default: the path field) at the chosen precision, then reload and check it."""
        path = path or self.merged_path.text().strip()
        precision = self.precision_combo.currentText()
        try:
            merge_inputs = self.merge_inputs()
        except ValueError as exc:
            self._show_failure(str(exc))
            return
        model = self.model
        tokenizer = getattr(self.trained or self.session.loaded, "tokenizer", None)

        def work(on_event: Any) -> ExportCheck:
            inputs = self._check_inputs()
            on_event(f"merging in float32 and writing {precision} weights to {path}…")
            # No example inputs here: the check below reloads what was written, which proves more than
            # running a merged copy would, and leaves export_merged free to skip the copy.
            result = export_merged(model, path, precision=precision, adapter_name=self.adapter_name,
                                   tokenizer=tokenizer, variant_inputs=merge_inputs or None)
            on_event("reloading the export and running the check batch…")
            difference = verify_export(result, model, inputs, variant_inputs=merge_inputs or None)
            record_verification(result, difference)  # the sidecar keeps what the dialog shows (no sidecar: a folder)
            return ExportCheck("merged", result.path, precision, difference, _batch_size(inputs))

        self._run(work)

    def export_gguf_file(self, kind: str = "model", path: str | None = None) -> None:
        """Write the merged model (``kind="model"``) or the adapter as GGUF, then read it back and compare."""
        path = path or self.gguf_path.text().strip()
        gguf_type = self.gguf_type_combo.currentText()
        model, name = self.model, self.adapter_name
        tokenizer = getattr(self.trained or self.session.loaded, "tokenizer", None)

        def work(on_event: Any) -> ExportCheck:
            on_event(f"writing the GGUF {kind} ({gguf_type}) to {path}…")
            if kind == "model":
                result = export_gguf(model, path, tokenizer, precision=gguf_type)
            else:
                result = export_gguf_adapter(model, path, name, precision=gguf_type)
            on_event("reading it back and comparing every tensor…")
            return ExportCheck(f"GGUF {kind}", result.path, f"gguf-{gguf_type}", verify_gguf(result, model, name),
                               result.tensors, unit="tensors")

        self._run(work)

    def push_to_hub(self, kind: str = "adapter") -> None:
        """Upload the last run's adapter (or merged model) with its model card to the repository typed."""
        repo_id, private = self.repo_edit.text().strip(), self.private_check.isChecked()
        result = RunController.for_session(self.session).last_result()
        if result is None:
            self._show_failure("no finished run to push: train one first (the push sends the last run's folder)")
            return

        def work(on_event: Any) -> PushResult:
            on_event(f"staging the {kind} and its model card, then uploading to {repo_id}…")
            return push_run(result.run_dir, repo_id, kind=kind, private=private)

        self._run(work)

    def merge_inputs(self) -> dict[str, Any]:
        """The variant's merge inputs as typed; ValueError names the one that does not parse."""
        values = {}
        for name, edit in self.merge_input_edits.items():
            try:
                values[name] = parse_merge_input(edit.text())
            except ValueError as exc:
                raise ValueError(f"merge input {name}: {exc}") from None
        return values

    def is_busy(self) -> bool:
        """True while an export is being written or checked."""
        return self._worker is not None

    # -- building -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.header_label = QLabel(self._header_text(), wordWrap=True)
        layout.addWidget(self.header_label)
        run_dir = Path(self.session.config.output.dir)

        adapter_box = QGroupBox("Adapter (PEFT format: loads in PEFT and in the studio)")
        self.adapter_path = QLineEdit(str(run_dir / "export" / "adapter"))
        self.adapter_button = QPushButton("Export adapter")
        self.adapter_button.clicked.connect(lambda: self.export_adapter())
        form = QFormLayout(adapter_box)
        form.addRow("Folder", row(self.adapter_path, self._browse_button(self.adapter_path, folder=True)))
        form.addRow("", row(self.adapter_button))
        layout.addWidget(adapter_box)

        transformers = hasattr(self.model, "save_pretrained")
        merged_box = QGroupBox("Merged model (the adapter folded into the weights: no LoRA code needed to run it)")
        default = run_dir / "export" / ("merged" if transformers else "merged.safetensors")
        self.merged_path = QLineEdit(str(default))
        self.format_label = QLabel("a transformers folder (save_pretrained: config, safetensors, tokenizer)"
                                   if transformers else "a safetensors file of the original architecture's "
                                   "state dict, with a .export.json note beside it")
        self.format_label.setProperty("role", "note")
        self.format_label.setWordWrap(True)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(EXPORT_PRECISIONS))  # the precisions export_merged writes
        self.merge_input_edits: dict[str, QLineEdit] = {}
        self.merge_reason = QLabel(wordWrap=True)
        self.merge_reason.setProperty("role", "warning")
        self.merge_reason.setStyleSheet("color: #b45309;")  # readable without the app's style sheet too
        self.merged_button = QPushButton("Export merged")
        self.merged_button.clicked.connect(lambda: self.export_merged_model())
        form = QFormLayout(merged_box)
        self.merged_browse = self._browse_button(self.merged_path, folder=transformers)
        form.addRow("Path", row(self.merged_path, self.merged_browse))
        form.addRow("Format", self.format_label)
        form.addRow("Precision", self.precision_combo)
        if self.variant is not None:
            examples = self.variant.merge_example(1)[0]
            for name in self.variant.merge_inputs:
                edit = QLineEdit(format_merge_input(examples[name]) if name in examples else "")
                edit.setToolTip(self.variant.merge_note)
                self.merge_input_edits[name] = edit
                form.addRow(f"Merge for {name}", edit)
        form.addRow("", self.merge_reason)
        form.addRow("", row(self.merged_button))
        self.merged_box = merged_box
        layout.addWidget(merged_box)

        self.gguf_box = QGroupBox("GGUF (llama.cpp, Ollama, LM Studio: the merged model, or the adapter for --lora)")
        self.gguf_path = QLineEdit(str(run_dir / "export" / "model.gguf"))
        self.gguf_type_combo = QComboBox()
        self.gguf_type_combo.addItems(list(GGUF_TYPES))
        self.gguf_type_combo.setCurrentText("f16")
        self.gguf_reason = QLabel(wordWrap=True)
        self.gguf_reason.setStyleSheet("color: #b45309;")
        self.gguf_model_button = QPushButton("Export GGUF model")
        self.gguf_model_button.clicked.connect(lambda: self.export_gguf_file("model"))
        self.gguf_adapter_button = QPushButton("Export GGUF adapter")
        self.gguf_adapter_button.clicked.connect(lambda: self.export_gguf_file("adapter"))
        form = QFormLayout(self.gguf_box)
        form.addRow("File", row(self.gguf_path, self._browse_button(self.gguf_path, folder=False, kind="gguf")))
        form.addRow("Type", self.gguf_type_combo)
        form.addRow("", self.gguf_reason)
        form.addRow("", row(self.gguf_model_button, self.gguf_adapter_button))
        layout.addWidget(self.gguf_box)

        self.hub_box = QGroupBox("Hugging Face Hub (the last run, with a model card and its loss plot)")
        self.repo_edit = QLineEdit()
        self.repo_edit.setPlaceholderText("owner/name, e.g. alice/minilm-sentiment-lora")
        self.private_check = QCheckBox("Private repository")
        self.push_adapter_button = QPushButton("Push adapter")
        self.push_adapter_button.clicked.connect(lambda: self.push_to_hub("adapter"))
        self.push_merged_button = QPushButton("Push merged")
        self.push_merged_button.clicked.connect(lambda: self.push_to_hub("merged"))
        self.repo_edit.textChanged.connect(lambda _text: self._set_busy(self.is_busy()))
        form = QFormLayout(self.hub_box)
        form.addRow("Repository", self.repo_edit)
        form.addRow("", self.private_check)
        form.addRow("", row(self.push_adapter_button, self.push_merged_button))
        layout.addWidget(self.hub_box)

        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # writing and reloading report no fraction: a busy bar, honestly
        self.status_label = QLabel(wordWrap=True)
        self.result_label = QLabel(wordWrap=True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.result_label.setOpenExternalLinks(True)  # a push names its repository as a link
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.result_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        self.close_button = buttons.button(QDialogButtonBox.StandardButton.Close)
        layout.addWidget(buttons)

    def _header_text(self) -> str:
        if self.adapter_name is None:
            return "No trained adapter to export: train a run first (the export uses the last finished run)."
        config = get_adapter_config(self.model, self.adapter_name)
        return (f"Adapter <b>{self.adapter_name}</b> · variant {self.variant.title or self.variant.name} · "
                f"rank {config.r}, alpha {config.alpha:g} · {len(config.targets)} target pattern(s)")

    def _browse_button(self, edit: QLineEdit, folder: bool, kind: str = "safetensors") -> QPushButton:
        button = QPushButton("Browse…")

        def browse() -> None:
            settings = StudioSettings()  # the studio's own file, which tests and the renderer redirect
            start = (settings.last_folder("export") if settings.has_last_folder("export")
                     else str(Path(edit.text()).parent))  # fmt: skip
            if folder:
                path = QFileDialog.getExistingDirectory(self, "Export to folder", start)
            else:
                path, _ = QFileDialog.getSaveFileName(self, "Export to file", start, f"{kind} (*.{kind})")
            if path:
                settings.set_last_folder("export", str(Path(path).parent))
                edit.setText(path)

        button.clicked.connect(browse)
        return button

    # -- running ------------------------------------------------------------------------------------------
    def _check_inputs(self) -> Any:
        """The fixed check batch (runs on the worker: building it reads the data)."""
        if self.example_inputs is None:
            loaded = self.trained or self.session.loaded
            if loaded is None:
                raise RuntimeError("no model is loaded in the studio, so there is no data to check the export with")
            self.example_inputs = export_example_inputs(self.session.config.data, loaded)
        return self.example_inputs

    def _run(self, work: Any) -> None:
        if self.is_busy():
            return
        self.result_label.setText("")
        lock, model = RunController.for_session(self.session).model_lock, self.model

        def locked(on_event: Any) -> Any:
            # The Try tab may be running the same model (and may have moved it to the run's device):
            # wait for it, and export from the CPU, where the check batch is.
            with lock:
                first = next(model.parameters(), None) if model is not None else None
                if first is not None and first.device.type != "cpu":
                    model.to("cpu")
                return work(on_event)

        self._worker = FunctionWorker(locked)
        # Bound methods of this dialog: Qt queues them onto the UI thread.
        self._worker.sig_event.connect(self._on_progress)
        self._worker.sig_finished.connect(self._on_finished)
        self._worker.sig_failed.connect(self._on_failed)
        self._set_busy(True)
        self._worker.start()

    def _on_progress(self, message: object) -> None:
        self.status_label.setText(str(message))

    def _on_finished(self, check: ExportCheck | PushResult) -> None:
        self._end_worker()
        if isinstance(check, PushResult):
            self.status_label.setText(f"Pushed to {check.url}")
            self.result_label.setText(f"The {check.kind} and its model card ({len(check.files)} files) are in "
                                      f"<a href='{check.url}'>{check.repo_id}</a>.")
            return
        self.last_check = check
        tolerance = TOLERANCE[check.precision]
        verdict = "within" if check.within_tolerance else "ABOVE"
        colour = "#15803d" if check.within_tolerance else "#b45309"
        self.status_label.setText(f"Wrote {check.path}")
        if check.unit == "tensors":
            self.result_label.setText(
                f"Read the {check.what} back and compared its {check.samples} tensors with the live model's: "
                f"<span style='color:{colour}'><b>largest relative difference {check.difference:.3g}</b> "
                f"({verdict} the {check.precision.removeprefix('gguf-')} rounding {tolerance:.3g})</span>")
            self.sig_exported.emit(check)
            return
        self.result_label.setText(
            f"Reloaded the {check.what} export and ran {check.samples} samples through it and the live model: "
            f"<span style='color:{colour}'><b>largest difference {check.difference:.3g}</b> "
            f"({verdict} the {check.precision} tolerance {tolerance:g})</span>")
        self.sig_exported.emit(check)

    def _on_failed(self, message: str, _traceback: str) -> None:
        self._end_worker()
        self._show_failure(message)

    def _show_failure(self, message: str) -> None:
        self.status_label.setText("")
        self.result_label.setText(f"<span style='color:#b91c1c'>Export failed: {message}</span>")
        self.sig_export_failed.emit(message)

    def _end_worker(self) -> None:
        if self._worker is not None:
            self._worker.wait()
            self._worker = None
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        """Grey the export controls while working (and merged export when the variant cannot merge)."""
        has_adapter = self.adapter_name is not None
        self.progress.setVisible(busy)
        self.adapter_button.setEnabled(has_adapter and not busy)
        can_merge = has_adapter and self.variant.can_merge
        self.merged_button.setEnabled(can_merge and not busy)
        for widget in (self.merged_path, self.merged_browse, self.precision_combo, *self.merge_input_edits.values()):
            widget.setEnabled(can_merge)
        if has_adapter and not self.variant.can_merge:
            reason = self.variant.merge_note or "this variant cannot be merged into the weights"
            self.merge_reason.setText(f"{self.variant.title or self.variant.name} cannot be merged: {reason}")
            self.merged_button.setToolTip(self.merge_reason.text())
        self.merge_reason.setVisible(bool(self.merge_reason.text()))
        problem = gguf_problem(self.model) if self.model is not None else "no model to export"
        self.gguf_reason.setText(problem or "")
        self.gguf_reason.setVisible(bool(problem))
        self.gguf_model_button.setEnabled(has_adapter and not problem and not busy)
        plain_lora = has_adapter and self.variant.name in ("lora", "lora_plus")
        self.gguf_adapter_button.setEnabled(plain_lora and not problem and not busy)
        self.gguf_adapter_button.setToolTip("" if plain_lora else "llama.cpp's adapters are plain LoRA; export a "
                                            "GGUF model instead")
        for widget in (self.gguf_path, self.gguf_type_combo):
            widget.setEnabled(not problem)
        can_push = has_adapter and "/" in self.repo_edit.text().strip() and not busy
        self.push_adapter_button.setEnabled(can_push)
        self.push_merged_button.setEnabled(can_push and self.variant.can_merge)

    def reject(self) -> None:
        """Close, but not while a worker still writes (its files would be left half-checked)."""
        if self.is_busy():
            self.status_label.setText("still exporting; close when it has finished")
            return
        super().reject()


def _adapter_name(model: Any) -> str | None:
    """The adapter to export: the model's active one (None without adapters)."""
    if model is None:
        return None
    try:
        return active_adapter(model) if list_adapters(model) else None
    except (ValueError, AttributeError):
        return None


def _batch_size(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return int(first.shape[0])
