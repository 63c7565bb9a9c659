"""The studio window: model and layer tree on the left, training, data and history in the middle,
counts and settings in a dock on the right.

Every panel takes the one :class:`~.state.session.StudioSession` and subscribes to its signals.  The
window adds what belongs to no panel: the menus (projects, recent projects, export, demos,
theme), keyboard shortcuts, drag and drop, the persisted layout (QSettings), and a clean close
while a run trains (ask, then stop and wait).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, Qt
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import DEMOS, ModelConfig, RunConfig

from .dialogs.export_dialog import ExportDialog
from .panels.counts_panel import CountsPanel
from .panels.data_panel import DataPanel
from .panels.history_panel import HistoryPanel
from .panels.layer_tree_panel import LayerTreePanel
from .panels.model_panel import ModelPanel
from .panels.run_panel import RunPanel
from .panels.settings_panel import SettingsPanel
from .state.project_files import PROJECT_FILTER, THEMES, StudioSettings, open_project, save_project
from .state.session import StudioSession
from .theme import apply_theme


class MainWindow(QMainWindow):
    """LoRA Studio's main window."""

    def __init__(self, session: StudioSession | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session or StudioSession(parent=self)
        self.settings = StudioSettings()
        self.setWindowTitle("LoRA Studio")
        self.setAcceptDrops(True)
        self.resize(1500, 920)

        self.model_panel = ModelPanel(self.session)
        self.layer_tree = LayerTreePanel(self.session)
        left = QWidget()  # the picker as tall as its page needs, the tree takes the rest
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.model_panel)
        left_layout.addWidget(self.layer_tree, 1)
        left.setMinimumWidth(590)  # the tree's columns (name to added parameters) fit without scrolling

        self.data_panel = DataPanel(self.session)
        self.run_panel = RunPanel(self.session)
        self.history_panel = HistoryPanel(self.session)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.run_panel, "Train")
        self.tabs.addTab(self.data_panel, "Data")
        self.tabs.addTab(self.history_panel, "History")
        # The run summary card's Export and Compare; a run resumed from History shows in Train.
        self.run_panel.sig_export_requested.connect(self.open_export_dialog)
        self.run_panel.sig_compare_requested.connect(self.show_run_in_history)
        self.run_panel.controller.sig_run_continued.connect(lambda _folder: self.tabs.setCurrentWidget(self.run_panel))

        central = QSplitter(Qt.Orientation.Horizontal)
        central.setObjectName("central_splitter")
        central.addWidget(left)
        central.addWidget(self.tabs)
        central.setStretchFactor(0, 2)
        central.setStretchFactor(1, 3)
        central.setSizes([640, 860])
        self.setCentralWidget(central)

        self.settings_panel = SettingsPanel(self.session)
        self.counts_panel = CountsPanel(self.session)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.counts_panel)
        side_layout.addWidget(self.settings_panel, 1)
        self.settings_dock = dock = QDockWidget("Settings", self)
        dock.setObjectName("settings_dock")
        dock.setWidget(side)
        dock.setMinimumWidth(380)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)

        self._build_menus()
        self.session.sig_project_changed.connect(lambda _path: self._update_title())
        self.session.sig_model_failed.connect(self._model_failed)
        self._restore_layout()
        self.set_theme(self.settings.theme())
        self._update_title()

    # -- projects ------------------------------------------------------------------------------
    def new_project(self) -> None:
        """A fresh config for the model on screen (its ``[model]`` kept), with no project file."""
        self.session.set_config(RunConfig(model=self.session.config.model))
        self.session.clear_field_errors()
        self.session.set_project_path(None)

    def open_project_file(self, path: str | Path) -> str | None:
        """Open project ``path``: its config, then its model.  Returns the error message, or None."""
        try:
            config = open_project(path)
        except (ValueError, OSError) as exc:
            return str(exc)
        same_model = config.model == self.session.config.model and self.session.browse_model is not None
        self.session.set_config(config)
        self.session.clear_field_errors()
        self.session.set_project_path(Path(path))
        self.settings.add_recent_project(path)
        self._rebuild_recent_menu()
        self.model_panel.show_model_config(config.model)
        if not same_model:
            self.model_panel.load(config.model)
        return None

    def save_project_file(self, path: str | Path | None = None) -> Path | None:
        """Save to ``path`` (or the current project file; asks for one when there is none)."""
        path = path or self.session.project_path or self._ask_save_path()
        if not path:
            return None
        saved = save_project(self.session.config, path)
        self.session.set_project_path(saved)
        self.settings.add_recent_project(saved)
        self._rebuild_recent_menu()
        self.statusBar().showMessage(f"Saved {saved}", 4000)
        return saved

    # -- other actions ---------------------------------------------------------------------------
    def show_run_in_history(self, folder: str) -> None:
        """The History tab with the run in ``folder`` selected and ticked for comparison."""
        self.tabs.setCurrentWidget(self.history_panel)
        self.history_panel.focus_run(folder)

    def open_export_dialog(self) -> ExportDialog:
        """Open the export dialog on the trained model (None before a run has finished)."""
        trained = self.run_panel.trained_model() if hasattr(self.run_panel, "trained_model") else None
        dialog = ExportDialog(self.session, trained, self)
        dialog.open()
        return dialog

    def set_theme(self, theme: str) -> None:
        """Switch to the light or dark theme (remembered)."""
        apply_theme(QApplication.instance(), theme)
        self.settings.set_theme(theme)
        for action in self._theme_actions.actions():
            action.setChecked(action.data() == theme)

    def handle_drop(self, path: str | Path) -> str:
        """What dropping ``path`` on the window does: a project opens, a model folder/file loads,
        anything else becomes the training data.  Returns what was done, for the status bar."""
        path = Path(path)
        if path.suffix == ".toml":
            error = self.open_project_file(path)
            return error or f"Opened project {path.name}"
        if path.is_dir() and (path / "config.json").is_file():
            self.model_panel.load(ModelConfig(source="transformers", name=str(path),
                                              task=self.model_panel.hf_task.currentText()))
            return f"Loading the transformers model in {path.name}"
        if path.suffix == ".py":
            self.model_panel.show_model_config(ModelConfig(source="python", name=f"{path}:build_model"))
            return "Name the factory function in the model panel, then press Load"
        if path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
            self.model_panel.select_source("checkpoint")
            self.model_panel.ckpt_file.edit.setText(str(path))
            return "Say which architecture the checkpoint fits, then press Load"
        if hasattr(self.data_panel, "choose_path"):
            self.tabs.setCurrentWidget(self.data_panel)
            error = self.data_panel.choose_path(str(path))
            return error or f"Training data: {path.name}"
        return f"Nothing to do with {path.name}"

    # -- Qt events --------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        running = hasattr(self.run_panel, "is_running") and self.run_panel.is_running()
        if running:
            answer = QMessageBox.question(
                self, "A run is training", "Stop the run and close LoRA Studio?\n"
                "The last checkpoint stays in the run folder; Resume continues from it.",
            )  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            if hasattr(self.run_panel, "stop_and_wait"):
                self.run_panel.stop_and_wait()
        self._finish_background_work()
        self.settings.set_window_state(self.saveGeometry(), self.saveState())
        self.settings.sync()
        super().closeEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.statusBar().showMessage(self.handle_drop(url.toLocalFile()), 6000)
                event.acceptProposedAction()
                return

    # -- helpers ----------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._action(file_menu, "&New project", self.new_project, QKeySequence.StandardKey.New)
        self._action(file_menu, "&Open project…", self._ask_open, QKeySequence.StandardKey.Open)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self._action(file_menu, "&Save project", self.save_project_file, QKeySequence.StandardKey.Save)
        self._action(file_menu, "Save project &as…", lambda: self.save_project_file(self._ask_save_path()),
                     QKeySequence.StandardKey.SaveAs)
        file_menu.addSeparator()
        self.export_action = self._action(file_menu, "&Export…", self.open_export_dialog, "Ctrl+E")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self._rebuild_recent_menu()

        model_menu = self.menuBar().addMenu("&Model")
        self._action(model_menu, "&Load model", self.model_panel.load_from_page, "Ctrl+L")
        for i, name in enumerate(DEMOS, start=1):
            self._action(model_menu, f"Open the {name} demo", lambda _=False, n=name: self.model_panel.open_demo(n),
                         f"Ctrl+{i}")
        model_menu.addSeparator()
        self._action(model_menu, "Find layer", self.layer_tree.filter_edit.setFocus, QKeySequence.StandardKey.Find)

        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.settings_dock.toggleViewAction())
        theme_menu = view_menu.addMenu("&Theme")
        self._theme_actions = QActionGroup(self)
        for theme in THEMES:
            action = QAction(theme.capitalize(), self, checkable=True)
            action.setData(theme)
            action.triggered.connect(lambda _=False, t=theme: self.set_theme(t))
            self._theme_actions.addAction(action)
            theme_menu.addAction(action)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _=False: slot())
        menu.addAction(action)
        return action

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_projects()
        for path in recent:
            self.recent_menu.addAction(Path(path).name, lambda p=path: self._open_and_report(p)).setToolTip(path)
        self.recent_menu.setEnabled(bool(recent))

    def _ask_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", self.settings.last_folder("project"),
                                              PROJECT_FILTER)
        if path:
            self.settings.set_last_folder("project", str(Path(path).parent))
            self._open_and_report(path)

    def _open_and_report(self, path: str) -> None:
        error = self.open_project_file(path)
        if error:
            QMessageBox.warning(self, "Cannot open the project", error)

    def _ask_save_path(self) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, "Save project", self.settings.last_folder("project"),
                                              PROJECT_FILTER)
        if path:
            self.settings.set_last_folder("project", str(Path(path).parent))
        return path or None

    def _model_failed(self, message: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, "The model did not load", message, parent=self)
        box.open()  # not exec(): the window stays responsive (and tests are never blocked)

    def _finish_background_work(self, timeout_s: float = 10.0) -> None:
        # Qt aborts the whole process when a QThread is destroyed while it runs, so the window
        # lets a model load and the data preview's reads end before it goes away.
        self.model_panel.wait_idle()
        reading = getattr(self.data_panel, "is_reading", None)
        deadline = time.monotonic() + timeout_s
        while callable(reading) and reading() and time.monotonic() < deadline:
            QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        wait_idle = getattr(self.data_panel, "wait_idle", None)
        if callable(wait_idle):
            wait_idle()

    def _restore_layout(self) -> None:
        geometry, state = self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def _update_title(self) -> None:
        path = self.session.project_path
        self.setWindowTitle(f"LoRA Studio — {path.name}" if path else "LoRA Studio")
