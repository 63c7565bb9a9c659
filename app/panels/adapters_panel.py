"""The Adapters tab: the adapters on the loaded model, side by side, and what can be done with them.

A list (name, variant, rank, targets, size, where it came from, the run it came from; the active
one marked ●) above a button bar: Open… (or drop adapter folders on the tab), Activate, Disable
all, Rename…, Delete, Combine… (two or more chosen, a weight each, a method and its settings),
Save… (PEFT's format), Export merged… (the export dialog on the model with the chosen adapter
active) and Try (the Try tab tries the model with the chosen adapter active, beside its base).

:class:`~lora_studio.app.state.adapter_library.AdapterLibrary` keeps the adapters and runs every
operation on a worker; refusals (a folder for another base, a combination the engine does not
define) show in the notice bar with the engine's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..dialogs.export_dialog import ExportDialog
from ..state.adapter_library import (
    DENSITY_METHODS,
    MAJORITY_SIGN_METHODS,
    MAJORITY_SIGNS,
    METHOD_NOTES,
    METHODS,
    SVD_RANK_METHODS,
    AdapterEntry,
    AdapterLibrary,
    CombineRequest,
    adapter_folders_in,
    unique_name,
)
from ..state.project_files import StudioSettings
from ..state.run_controller import RunController
from ..state.session import StudioSession
from ..state.try_runner import TryRunner
from ..state.try_sources import OPENED
from ..widgets.flow_layout import flow_bar
from ..widgets.notice_bar import NoticeBar

COLUMNS = ("Name", "Variant", "Rank", "Targets", "Size", "From", "Run")
EMPTY_TEXT = ("No adapters yet. Open adapter folders (ours, or PEFT's LoRA/LoHa/LoKr/DoRA folders) with Open…, "
              "or drop them here; the run you train next joins the list by itself. Then switch between them, "
              "combine them, try them, save them or export one merged.")


class CombineDialog(QDialog):
    """The combine form: the chosen adapters with a weight each, the method and its settings, the new name."""

    def __init__(self, names: list[str], taken: list[str], parent: QWidget | None = None,
                 check: Callable[[CombineRequest], str | None] | None = None, *, whole_modules: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle("Combine adapters")
        self.setMinimumWidth(480)
        self.names = list(names)
        self._check = check or (lambda request: request.problem())
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"A new adapter from {len(names)} adapters: a weight each, and how to combine them",
                                wordWrap=True))
        form = QFormLayout()
        self.weights: dict[str, QDoubleSpinBox] = {}
        for name in names:
            spin = QDoubleSpinBox()
            spin.setRange(-10.0, 10.0)
            spin.setDecimals(3)
            spin.setSingleStep(0.1)
            spin.setValue(round(1.0 / len(names), 3))
            self.weights[name] = spin
            form.addRow(f"Weight of {name}", spin)
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.method.setToolTip("How the updates are combined (PEFT's combination_type)")
        self.method_note = QLabel(wordWrap=True)
        self.method_note.setProperty("role", "note")
        self.density = QDoubleSpinBox()
        self.density.setRange(0.01, 1.0)
        self.density.setSingleStep(0.05)
        self.density.setValue(0.5)
        self.density.setToolTip("The fraction of each adapter's update kept")
        self.majority_sign = QComboBox()
        self.majority_sign.addItems(list(MAJORITY_SIGNS))
        self.majority_sign.setToolTip("total: the sign of the summed updates; frequency: the most common sign")
        self.svd_rank = QSpinBox()
        self.svd_rank.setRange(0, 4096)
        self.svd_rank.setSpecialValueText("largest of the adapters")
        self.svd_rank.setToolTip("The new adapter's rank (0: the largest rank among the adapters)")
        self.whole_modules = QCheckBox("Combine the modules trained fully (a run's classifier head) too")
        self.whole_modules.setToolTip("Each new copy is the original plus the combined changes of the adapters' "
                                      "copies (PEFT refuses such adapters; lora-studio combine does this)")
        self.whole_modules.setChecked(True)
        self.whole_modules.setVisible(whole_modules)
        self.new_name = QLineEdit(unique_name("combined", taken))
        form.addRow("Method", self.method)
        form.addRow("", self.method_note)
        form.addRow("Density", self.density)
        form.addRow("Majority sign", self.majority_sign)
        form.addRow("SVD rank", self.svd_rank)
        form.addRow("", self.whole_modules)
        form.addRow("New adapter's name", self.new_name)
        self.form = form
        layout.addLayout(form)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Combine")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.problem_label = QLabel(wordWrap=True)
        self.problem_label.setStyleSheet("color: #b91c1c;")
        layout.insertWidget(layout.count() - 1, self.problem_label)
        self.method.currentTextChanged.connect(self._show_fields)
        for spin in (*self.weights.values(), self.density, self.svd_rank):
            spin.valueChanged.connect(self._show_problem)
        self.majority_sign.currentTextChanged.connect(self._show_problem)
        self.whole_modules.toggled.connect(self._show_problem)
        self.new_name.textChanged.connect(self._show_problem)
        self._show_fields(self.method.currentText())

    def set_method(self, method: str) -> None:
        """Choose ``method`` (its settings' rows appear)."""
        self.method.setCurrentText(method)

    def request(self) -> CombineRequest:
        """The combination as the form holds it."""
        method = self.method.currentText()
        return CombineRequest(
            tuple(self.names), tuple(spin.value() for spin in self.weights.values()), method,
            self.new_name.text().strip(),
            density=self.density.value() if method in DENSITY_METHODS else None,
            majority_sign_method=self.majority_sign.currentText() if method in MAJORITY_SIGN_METHODS else None,
            svd_rank=(self.svd_rank.value() or None) if method in SVD_RANK_METHODS else None,
            combine_modules_to_save=not self.whole_modules.isHidden() and self.whole_modules.isChecked())

    def _show_fields(self, method: str) -> None:
        self.method_note.setText(METHOD_NOTES.get(method, ""))
        for widget, shown in ((self.density, method in DENSITY_METHODS),
                              (self.majority_sign, method in MAJORITY_SIGN_METHODS),
                              (self.svd_rank, method in SVD_RANK_METHODS)):
            self.form.setRowVisible(widget, shown)
        self._show_problem()
        self.adjustSize()

    def problem(self) -> str | None:
        """Why the combination as the form holds it would be refused (the engine's reason), or None."""
        return self._check(self.request())

    def _show_problem(self, *_args: object) -> None:
        problem = self.problem()
        self.problem_label.setText(problem or "")
        self.problem_label.setVisible(bool(problem))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problem)

    def accept(self) -> None:
        """Close only on a combination the engine takes (the reason shows otherwise)."""
        if self.problem():
            self._show_problem()
            return
        super().accept()


class AdaptersPanel(QWidget):
    """The adapters list, its buttons and the notice bar."""

    sig_try_requested = Signal(str)
    """The Try tab was handed the model with this adapter active (the window shows the tab)."""

    def __init__(self, session: StudioSession, library: AdapterLibrary | None = None,
                 try_runner: TryRunner | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.library = library or AdapterLibrary(session, RunController.for_session(session), parent=self)
        self.try_runner = try_runner
        self.export_dialog: ExportDialog | None = None
        self._tried = False  # the library's model was handed to the Try tab
        self.combine_dialog: CombineDialog | None = None
        self.setAcceptDrops(True)
        self._build()
        self.library.sig_changed.connect(self._show_entries)
        self.library.sig_busy_changed.connect(self._on_busy)
        self.library.sig_done.connect(self._on_done)
        self.library.sig_error.connect(self._on_error)
        self._show_entries(self.library.entries())
        self._on_busy(self.library.is_busy())

    # -- public API --------------------------------------------------------------------------------
    def open_folders(self, paths: list[str | Path]) -> int:
        """Open adapter folders (on a worker); returns the job's id."""
        self.notice.show_notice("")
        self.status_label.setText("Opening " + ", ".join(Path(p).name for p in paths) + "…")
        return self.library.open_folders(paths)

    def selected_names(self) -> list[str]:
        """The chosen adapters, in the list's order."""
        chosen = {item.data(0, Qt.ItemDataRole.UserRole) for item in self.tree.selectedItems()}
        return [name for name in self.library.names() if name in chosen]

    def select(self, *names: str) -> None:
        """Choose ``names`` in the list (the others unchosen)."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setSelected(item.data(0, Qt.ItemDataRole.UserRole) in names)

    def activate_selected(self) -> int | None:
        """Make the chosen adapter the active one."""
        name = self._one("activate")
        return self.library.activate(name) if name else None

    def disable_all(self) -> int:
        """No adapter active: the model answers as its base."""
        return self.library.disable_all()

    def rename_selected(self, new_name: str | None = None) -> int | None:
        """Rename the chosen adapter (``new_name``: asked for when not given)."""
        name = self._one("rename")
        if not name:
            return None
        if new_name is None:
            new_name, ok = QInputDialog.getText(self, "Rename adapter", f"New name for {name}:", text=name)
            if not ok or new_name.strip() == name:
                return None
        new_name = new_name.strip()
        return self.library.rename(name, new_name, then=lambda _o: self.select(new_name))  # still the chosen one

    def delete_selected(self) -> int | None:
        """Remove the chosen adapters from the model (their folders stay)."""
        names = self.selected_names()
        if not names:
            self._say("Choose the adapters to delete in the list")
            return None
        job = None
        for name in names:
            job = self.library.delete(name)
        return job

    def open_combine_dialog(self) -> CombineDialog | None:
        """The combine form for the chosen adapters (two or more); Combine adds the new adapter."""
        names = self.selected_names()
        if len(names) < 2:
            self._say("Choose two or more adapters to combine (Ctrl+click or Shift+click in the list)")
            return None
        whole = any(t.endswith(" (full)") for e in self.library.entries() if e.name in names for t in e.targets)
        dialog = CombineDialog(names, self.library.names(), self, check=self.library.combination_problem,
                               whole_modules=whole)
        dialog.accepted.connect(lambda: self.library.combine(dialog.request()))
        self.combine_dialog = dialog
        dialog.open()
        return dialog

    def save_selected(self, folder: str | Path | None = None) -> int | None:
        """Save the chosen adapter in PEFT's format (``folder``: asked for when not given)."""
        name = self._one("save")
        if not name:
            return None
        if folder is None:
            settings = StudioSettings()
            folder = QFileDialog.getExistingDirectory(self, f"Save {name} into a folder", settings.last_folder("adapters"))
            if not folder:
                return None
            settings.set_last_folder("adapters", str(folder))
        return self.library.save(name, folder)

    def export_selected(self) -> int | None:
        """Activate the chosen adapter, then open the export dialog on the model (merged export and its check)."""
        name = self._one("export")
        return self.library.activate(name, then=lambda _o: self._open_export()) if name else None

    def try_selected(self) -> int | None:
        """Activate the chosen adapter, then hand the model to the Try tab."""
        name = self._one("try")
        if not name:
            return None
        if self.try_runner is None:
            self._say("There is no Try tab to hand the model to")
            return None
        return self.library.activate(name, then=lambda _o, n=name: self._hand_to_try(n))

    def wait_idle(self, timeout_ms: int = 30_000) -> bool:
        """Wait for the library's jobs (the window's close, tests)."""
        return self.library.wait_idle(timeout_ms)

    # -- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.header_label = QLabel(wordWrap=True)
        self.header_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.notice = NoticeBar("Details…")
        self.notice.sig_action.connect(self._show_failure_details)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setMinimumSize(200, 80)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COLUMNS.index("From"), QHeaderView.ResizeMode.Stretch)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.itemDoubleClicked.connect(lambda _item, _col: self.activate_selected())
        # The chosen adapter's facts in full: in a narrow pane the list's right-hand columns scroll away.
        self.details_label = QLabel(wordWrap=True)
        self.details_label.setObjectName("adapter_details")
        self.details_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.details_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.empty_label = QLabel(EMPTY_TEXT, wordWrap=True)
        self.empty_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.empty_label.setProperty("role", "note")

        def button(text: str, tip: str, slot) -> QPushButton:
            found = QPushButton(text)
            found.setToolTip(tip)
            found.clicked.connect(lambda _=False: slot())
            return found

        self.open_button = button("Open…", "Open adapter folders (ours or PEFT's), checked against the base",
                                  self._ask_folders)
        self.activate_button = button("Activate", "Make the chosen adapter the one the model runs",
                                      self.activate_selected)
        self.disable_button = button("Disable all", "No adapter active: the model answers as its base",
                                     self.disable_all)
        self.rename_button = button("Rename…", "Give the chosen adapter another name", self.rename_selected)
        self.delete_button = button("Delete", "Remove the chosen adapters from the model (their folders stay)",
                                    self.delete_selected)
        self.combine_button = button("Combine…", "A new adapter from two or more chosen ones: weights and a method",
                                     self.open_combine_dialog)
        self.save_button = button("Save…", "Write the chosen adapter in PEFT's format", self.save_selected)
        self.export_button = button("Export merged…", "The export dialog on the model with the chosen adapter active",
                                    self.export_selected)
        self.try_button = button("Try", "Try the model with the chosen adapter active, beside its base (Try tab)",
                                 self.try_selected)
        self.selection_buttons = (self.activate_button, self.rename_button, self.delete_button, self.combine_button,
                                  self.save_button, self.export_button, self.try_button)
        bar = flow_bar(self.open_button, self.activate_button, self.disable_button, self.rename_button,
                       self.delete_button, self.combine_button, self.save_button, self.export_button, self.try_button)
        self.status_label = QLabel(wordWrap=True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header_label)
        layout.addWidget(self.notice)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.details_label)
        layout.addWidget(bar)
        layout.addWidget(self.status_label)

    # -- the library's signals ---------------------------------------------------------------------
    def _show_entries(self, entries: list[AdapterEntry]) -> None:
        chosen = set(self.selected_names())
        self.tree.blockSignals(True)
        self.tree.clear()
        bold = QFont(self.tree.font())
        bold.setBold(True)
        for entry in entries:
            run = Path(entry.run).name if entry.run else ""
            values = (("● " if entry.active else "") + entry.name, entry.variant, entry.rank, entry.targets_text,
                      entry.size_text, entry.origin, run)
            item = QTreeWidgetItem(list(values))
            item.setData(0, Qt.ItemDataRole.UserRole, entry.name)
            item.setToolTip(0, f"{entry.name}{' (active)' if entry.active else ''}"
                               + (f"\nNote: {entry.note}" if entry.note else ""))
            item.setToolTip(COLUMNS.index("Targets"), "\n".join(entry.targets))
            item.setToolTip(COLUMNS.index("From"), entry.origin)
            item.setToolTip(COLUMNS.index("Run"), entry.run)
            if entry.active:
                for column in range(len(COLUMNS)):
                    item.setFont(column, bold)
            self.tree.addTopLevelItem(item)
            item.setSelected(entry.name in chosen)
        self.tree.blockSignals(False)
        for column in range(len(COLUMNS) - 2):
            self.tree.resizeColumnToContents(column)
        targets = COLUMNS.index("Targets")  # the details line below has them all
        self.tree.setColumnWidth(targets, min(self.tree.columnWidth(targets), 14 * self.fontMetrics().averageCharWidth()))
        self.empty_label.setVisible(not entries)
        loaded = self.session.loaded
        base = (loaded.name_or_path or type(loaded.model).__name__) if loaded is not None else None
        active = self.library.active()
        self.header_label.setText(
            "No model loaded: load one (the adapters attach to its base)" if base is None else
            f"Adapters on <b>{base}</b>: {len(entries)} · active: <b>{active}</b>" if entries and active else
            f"Adapters on <b>{base}</b>: {len(entries)} · none active (the model answers as its base)" if entries
            else f"Adapters on <b>{base}</b>: none yet")
        self._update_buttons()
        self._follow_in_try()

    def _on_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()
        if not busy and self.status_label.text().endswith("…"):
            self.status_label.setText("")

    def _on_done(self, message: str) -> None:
        self.status_label.setText(message)

    def _on_error(self, message: str) -> None:
        self.notice.show_notice(message)
        self.notice.action_button.setVisible(bool(self.library.last_details))

    def _show_details(self) -> None:
        names = self.selected_names()
        entry = next((e for e in self.library.entries() if names and e.name == names[0]), None)
        if len(names) != 1 or entry is None:
            self.details_label.setText(f"{len(names)} adapters chosen: Combine… makes one of them" if names else "")
            self.details_label.setVisible(bool(names))
            return
        lines = [f"<b>{entry.name}</b>{' (active)' if entry.active else ''} · {entry.variant}, rank {entry.rank} · "
                 f"{entry.size_text}", f"Targets: {', '.join(entry.targets)}", f"From: {entry.origin}"]
        if entry.run:
            lines.append(f"Run: {entry.run}")
        if entry.note:
            lines.append(f"Note: {entry.note}")
        self.details_label.setText("<br>".join(lines))
        self.details_label.setVisible(True)

    def _update_buttons(self) -> None:
        self._show_details()
        busy = getattr(self, "_busy", False)
        chosen = len(self.selected_names())
        for widget in self.selection_buttons:
            widget.setEnabled(not busy and chosen >= 1)
        self.combine_button.setEnabled(not busy and chosen >= 2)
        for widget in (self.rename_button, self.save_button, self.export_button, self.try_button,
                       self.activate_button):
            widget.setEnabled(not busy and chosen == 1)
        self.disable_button.setEnabled(not busy and self.library.active() is not None)
        self.open_button.setEnabled(not busy)

    # -- helpers -----------------------------------------------------------------------------------
    def _one(self, doing: str) -> str | None:
        names = self.selected_names()
        if len(names) != 1:
            self._say(f"Choose one adapter to {doing} in the list")
            return None
        return names[0]

    def _say(self, text: str) -> None:
        self.notice.show_notice(text)
        self.notice.action_button.hide()

    def _open_export(self) -> None:
        dialog = ExportDialog(self.session, self.library.loaded(), self)
        name = dialog.adapter_name
        if name:  # each adapter's exports get their own default names: several can be exported side by side
            merged = Path(dialog.merged_path.text())
            dialog.merged_path.setText(str(merged.with_name(merged.name.replace("merged", f"{name}-merged", 1))))
            dialog.adapter_path.setText(str(Path(dialog.adapter_path.text()).with_name(name)))
        self.export_dialog = dialog
        dialog.open()  # modal: the active adapter cannot change under the export

    def _try_title(self) -> str:
        loaded = self.library.loaded()
        base = loaded.name_or_path or type(loaded.model).__name__
        active = self.library.active()
        return f"The Adapters tab's model: {active} active, on {base}" if active else \
            f"The Adapters tab's model: no adapter active, on {base}"

    def _hand_to_try(self, name: str) -> None:
        self._tried = True
        self.try_runner.try_model(self.library.loaded(), self._try_title())
        self.sig_try_requested.emit(name)

    def _follow_in_try(self) -> None:
        """The Try tab tries the library's model itself: after a switch its title says which adapter is
        active now (what it answers with), instead of the one handed to it."""
        runner, loaded = self.try_runner, self.library.loaded()
        if runner is None or not self._tried:
            return
        source = next((s for s in runner.sources() if s.kind == OPENED), None)
        if source is None or loaded is None or source.loaded is not loaded:
            self._tried = False  # the Try tab opened something else since
            return
        if not source.title.startswith(self._try_title()):
            runner.try_model(loaded, self._try_title())

    def _show_failure_details(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "What went wrong", self.notice.label.text(), parent=self)
        box.setDetailedText(self.library.last_details)
        box.open()

    def _ask_folders(self) -> None:
        settings = StudioSettings()
        folder = QFileDialog.getExistingDirectory(self, "Open an adapter folder (or a run folder, or a folder of "
                                                  "adapter folders)", settings.last_folder("adapters"))
        if folder:
            settings.set_last_folder("adapters", str(Path(folder).parent))
            self.open_folders([folder])

    # -- drag and drop ------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt's name)
        # Adapter folders are the tab's; anything else (a project file) is left to the window.
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if any(adapter_folders_in(p) for p in paths):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if self.handle_drop(paths):
            event.acceptProposedAction()

    def handle_drop(self, paths: list[str]) -> bool:
        """Dropped ``paths``: the adapter folders among them open; True when there was one."""
        folders = [p for p in paths if adapter_folders_in(p)]
        if not folders:
            self._say("Drop adapter folders here (a folder holding adapter_config.json, or a run folder)")
            return False
        self.open_folders(folders)
        return True
