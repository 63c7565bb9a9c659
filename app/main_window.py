"""The studio window: model and layer tree on the left, training, trying, data and history in the middle,
counts and settings in a dock on the right.

Every panel takes the one :class:`~.state.session.StudioSession` and subscribes to its signals.  The
window adds what belongs to no panel: the menus (projects, recent projects, export, demos,
theme), keyboard shortcuts, drag and drop, the persisted layout (QSettings), a clean close
while a run trains (ask, then stop and wait), and unsaved work: the title's ``*``, one Save /
Discard / Cancel question before quitting, New, Open or Load model replaces changes, and the
autosave (``state/autosave.py``) offered back at the next start.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, Qt, QUrl
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import lora_studio.core
from lora_studio.core import DEMOS, ModelConfig

from .dialogs.export_dialog import ExportDialog
from .panels.adapters_panel import AdaptersPanel
from .panels.counts_panel import CountsPanel
from .panels.data_panel import DataPanel
from .panels.history_panel import HistoryPanel
from .panels.layer_tree_panel import LayerTreePanel
from .panels.model_panel import ModelPanel
from .panels.run_panel import RunPanel
from .panels.settings_panel import SettingsPanel
from .panels.try_panel import TryPanel
from .state.adapter_library import adapter_folders_in
from .state.autosave import Autosaver, pending_restore
from .state.project_files import PROJECT_FILTER, THEMES, StudioSettings, open_project, save_project
from .state.session import StudioSession
from .theme import apply_theme


class MainWindow(QMainWindow):
    """LoRA Studio's main window."""

    def __init__(self, session: StudioSession | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session or StudioSession(parent=self)
        self.settings = StudioSettings()
        self.setWindowTitle(window_title(None))
        self.setAcceptDrops(True)
        self._resize_to_screen()

        self.model_panel = ModelPanel(self.session)
        self.layer_tree = LayerTreePanel(self.session)
        left = QWidget()  # the picker as tall as its page needs, the tree takes the rest
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.model_panel)
        left_layout.addWidget(self.layer_tree, 1)
        # The column scrolls rather than widening the window: its own minimum (the widest row of the
        # model and tree panels) never adds to the window's minimum width (1280x720 screens).
        self.left_scroll = _scroll_area(left, "left_scroll")
        self.left_scroll.setMinimumWidth(PANE_MIN_WIDTH)

        self.data_panel = DataPanel(self.session)
        self.run_panel = RunPanel(self.session)
        self.history_panel = HistoryPanel(self.session)
        self.try_panel = TryPanel(self.session)
        self.adapters_panel = AdaptersPanel(self.session, try_runner=self.try_panel.runner)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.run_panel, "Train")
        self.tabs.addTab(self.try_panel, "Try")  # beside Train: pause a run, then try it
        self.tabs.addTab(self.adapters_panel, "Adapters")  # beside Try: switch, combine, then try one
        self.tabs.addTab(self.data_panel, "Data")
        self.tabs.addTab(self.history_panel, "History")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.try_panel),
                                "Try the model with its adapter beside the base model, on your own inputs")
        self.tabs.setTabToolTip(self.tabs.indexOf(self.adapters_panel),
                                "The loaded model's adapters: open, switch, combine, save, export merged")
        self.adapters_panel.sig_try_requested.connect(lambda _name: self.tabs.setCurrentWidget(self.try_panel))
        # The run summary card's Export and Compare; a run resumed from History shows in Train.
        self.run_panel.sig_export_requested.connect(self.open_export_dialog)
        self.run_panel.sig_compare_requested.connect(self.show_run_in_history)
        self.run_panel.controller.sig_run_continued.connect(lambda _folder: self.tabs.setCurrentWidget(self.run_panel))

        central = QSplitter(Qt.Orientation.Horizontal)
        central.setObjectName("central_splitter")
        central.addWidget(self.left_scroll)
        central.addWidget(self.tabs)
        central.setStretchFactor(0, 2)
        central.setStretchFactor(1, 3)
        central.setSizes([560, 700])
        self.central_splitter = central
        self.setCentralWidget(central)

        self.settings_panel = SettingsPanel(self.session)
        self.counts_panel = CountsPanel(self.session)
        # Counts above, settings below, each scrolling on its own: every field stays reachable on a
        # 720-pixel-high screen, and the splitter lets the user give either one more room.
        self.counts_scroll = _scroll_area(self.counts_panel, "counts_scroll")
        side = QSplitter(Qt.Orientation.Vertical)
        side.setObjectName("side_splitter")
        side.addWidget(self.counts_scroll)
        side.addWidget(self.settings_panel)
        side.setStretchFactor(0, 0)
        side.setStretchFactor(1, 1)
        # Room for the counts as they are before a model loads, plus three wrapped lines of readings.
        counts_height = self.counts_panel.sizeHint().height() + 3 * self.fontMetrics().lineSpacing()
        side.setSizes([counts_height, 10_000])
        self.side_splitter = side
        self.settings_dock = dock = QDockWidget("Settings", self)
        dock.setObjectName("settings_dock")
        dock.setWidget(side)
        dock.setMinimumWidth(PANE_MIN_WIDTH)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)
        for region in (left, self.tabs):
            let_combo_boxes_shrink(region)
        let_form_values_wrap(self.counts_panel)

        self._build_menus()
        self.session.sig_project_changed.connect(lambda _path: self._update_title())
        # Unsaved work: the title's marker, a question before it is dropped, an autosave meanwhile.
        self.session.sig_modified_changed.connect(lambda modified: self._update_title(modified))
        self.model_panel.confirm_change = lambda: self.confirm_unsaved(
            "loading another model", "What fits the new model carries over either way; the rest is named, with Undo.")
        self.autosaver = Autosaver(self.session, parent=self)
        self.session.sig_model_failed.connect(self._model_failed)
        self._restore_layout()
        self.set_theme(self.settings.theme())
        self._update_title()

    # -- projects ------------------------------------------------------------------------------
    def new_project(self) -> bool:
        """A fresh config for the model on screen (what it comes with: its demo's settings, or the
        defaults with targets for it), with no project file.  Asks first about unsaved changes;
        False when the user cancelled."""
        if not self.confirm_unsaved("starting a new project"):
            return False
        self.session.open_config(self.session.fresh_config(), None)
        return True

    def open_project_file(self, path: str | Path, *, ask: bool = True) -> str | None:
        """Open project ``path``: its config, then its model.  Returns the error message, or None
        (also when the user cancelled the question about unsaved changes; ``ask=False`` skips it)."""
        try:
            config = open_project(path)
        except (ValueError, OSError) as exc:
            return str(exc)
        if ask and not self.confirm_unsaved(f"opening {Path(path).name}"):
            return None
        load = self.session.open_config(config, Path(path))
        self.settings.add_recent_project(path)
        self._rebuild_recent_menu()
        self.model_panel.show_model_config(config.model)
        if load:
            self.model_panel.load(config.model, exact=config)
        return None

    def confirm_unsaved(self, doing: str, note: str = "") -> bool:
        """Before ``doing`` something that replaces the config: with unsaved changes, ask Save /
        Discard / Cancel (``note``: a second line).  True to go on (saved, or discarded), False to stay."""
        if not self.session.is_modified():
            return True
        name = self.session.project_path.name if self.session.project_path else "the untitled project"
        buttons = QMessageBox.StandardButton
        text = f"Save the changes to {name} before {doing}?" + (f"\n{note}" if note else "")
        answer = QMessageBox.question(self, "Unsaved changes", text,
                                      buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save)
        if answer == buttons.Save:
            return self.save_project_file() is not None
        return answer == buttons.Discard

    def offer_restore(self) -> bool:
        """At start: when an autosave newer than its project's last save exists (the last session
        ended without saving), offer to restore it.  True when restored."""
        found = pending_restore(self.autosaver.folder)
        if found is None:
            return False
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.written_at))
        name = found.project.name if found.project else "an untitled project"
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self, "Restore unsaved work?", f"LoRA Studio closed with unsaved changes to {name} ({when}).\n"
            "Restore them? (Discard deletes the autosaved copy.)", buttons.Yes | buttons.Discard, buttons.Yes)
        if answer != buttons.Yes:
            self.autosaver.discard()
            return False
        self.session.open_config(found.config, found.project, saved=False)
        self.model_panel.show_model_config(found.config.model)
        self.model_panel.load(found.config.model, exact=found.config)
        self.statusBar().showMessage(f"Restored the unsaved changes of {when}", 6000)
        return True

    def save_project_file(self, path: str | Path | None = None) -> Path | None:
        """Save to ``path`` (or the current project file; asks for one when there is none)."""
        path = path or self.session.project_path or self._ask_save_path()
        if not path:
            return None
        saved = save_project(self.session.config, path)
        self.session.set_project_path(saved)
        self.session.mark_saved()
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
        if path.is_dir() and not (path / "config.json").is_file() and adapter_folders_in(path):
            self.tabs.setCurrentWidget(self.adapters_panel)
            self.adapters_panel.open_folders([path])
            return f"Opening the adapters in {path.name}"
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
        # One question covers both reasons to stay: a training run, and unsaved changes.
        running = hasattr(self.run_panel, "is_running") and self.run_panel.is_running()
        modified = self.session.is_modified()
        buttons = QMessageBox.StandardButton
        answer = buttons.Yes
        stop_note = "The last checkpoint stays in the run folder; Resume continues from it."
        if running and modified:
            answer = QMessageBox.question(
                self, "A run is training", "Closing stops the run. " + stop_note + "\n"
                "The project also has unsaved changes: save them before closing?",
                buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save)
        elif running:
            answer = QMessageBox.question(self, "A run is training",
                                          "Stop the run and close LoRA Studio?\n" + stop_note)
        elif modified:
            name = self.session.project_path.name if self.session.project_path else "the untitled project"
            answer = QMessageBox.question(self, "Unsaved changes", f"Save the changes to {name} before closing?",
                                          buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save)
        if answer in (buttons.Cancel, buttons.No, buttons.NoButton, buttons.Escape) or (
            answer == buttons.Save and self.save_project_file() is None
        ):
            event.ignore()
            return
        if answer == buttons.Discard:
            self.autosaver.discard()
        self.autosaver.timer.stop()
        if running and hasattr(self.run_panel, "stop_and_wait"):
            self.run_panel.stop_and_wait()
        self._finish_background_work()
        self.save_layout()
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

        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&Keyboard shortcuts", self.show_shortcuts, QKeySequence.StandardKey.HelpContents)
        self.about_action = self._action(help_menu, "&About LoRA Studio", self.show_about)

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
        self.try_panel.wait_idle(int(timeout_s * 1000))  # a prediction or generation ends within a batch or a token
        self.adapters_panel.wait_idle(int(timeout_s * 1000))  # an adapter job (load, combine, save) ends by itself
        reading = getattr(self.data_panel, "is_reading", None)
        deadline = time.monotonic() + timeout_s
        while callable(reading) and reading() and time.monotonic() < deadline:
            QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        wait_idle = getattr(self.data_panel, "wait_idle", None)
        if callable(wait_idle):
            wait_idle()

    def _splitters(self) -> dict[str, QSplitter]:
        return {"central": self.central_splitter, "side": self.side_splitter}

    def save_layout(self) -> None:
        """Remember the window's geometry, the dock's place and the splitters' sizes (QSettings);
        the next window opens as this one closes."""
        self.settings.set_window_state(self.saveGeometry(), self.saveState())
        for name, splitter in self._splitters().items():
            self.settings.set_splitter_state(name, splitter.saveState())
        self.settings.sync()

    def _restore_layout(self) -> None:
        geometry, state = self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)  # Qt moves it onto a screen that is still there
        if state is not None:
            self.restoreState(state)
        for name, splitter in self._splitters().items():
            saved = self.settings.splitter_state(name)
            if saved is not None:
                splitter.restoreState(saved)

    def _resize_to_screen(self) -> None:
        # The first window (no saved geometry yet) is 1500x920, or maximized on a screen smaller
        # than that plus a title bar (1366x768, 1280x720): a window a frame taller than the screen
        # hides its status bar.
        self.resize(*DEFAULT_SIZE)
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        if screen is not None and (screen.width() < DEFAULT_SIZE[0] + 40 or screen.height() < DEFAULT_SIZE[1] + 60):
            self.resize(min(DEFAULT_SIZE[0], screen.width()), min(DEFAULT_SIZE[1], screen.height()))
            self.setWindowState(self.windowState() | Qt.WindowState.WindowMaximized)

    def _update_title(self, modified: bool | None = None) -> None:
        """The one place the title is built: from the project's name and whether it has unsaved changes."""
        modified = self.session.is_modified() if modified is None else modified
        path = self.session.project_path
        self.setWindowTitle(window_title(path.name if path else None, modified))

    def show_about(self) -> QMessageBox:
        """Help → About: version, the libraries underneath, where the documentation is."""
        box = QMessageBox(QMessageBox.Icon.NoIcon, "About LoRA Studio", about_text(), parent=self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        icon = QApplication.windowIcon()
        if not icon.isNull():
            box.setIconPixmap(icon.pixmap(64, 64))
        box.open()  # not exec(): the window stays responsive (and tests are never blocked)
        return box

    def keyboard_shortcuts(self) -> list[tuple[str, str]]:
        """(what, keys) of every shortcut the window has: its menus' actions and its buttons'."""
        found: dict[str, str] = {}
        for action in self.findChildren(QAction):
            keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if keys and action.text():
                found.setdefault(action.text().replace("&", "").rstrip("…"), keys)
        for button in self.findChildren(QAbstractButton):
            keys = button.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if keys and button.text():
                found.setdefault(button.text().replace("&", ""), keys)
        return sorted(found.items(), key=lambda item: item[1])

    def show_shortcuts(self) -> QMessageBox:
        """Help → Keyboard shortcuts: a table of :meth:`keyboard_shortcuts`."""
        rows = "".join(f"<tr><td><b>{keys}</b>&nbsp;&nbsp;</td><td>{what}</td></tr>"
                       for what, keys in self.keyboard_shortcuts())
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", f"<table>{rows}</table>", parent=self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.open()
        return box


DEFAULT_SIZE = (1500, 920)  # the first window's size on a large screen (smaller screens: see _resize_to_screen)
PANE_MIN_WIDTH = 240  # the model column and the settings dock: narrower, and they scroll sideways
DOCK_WIDTH = 340  # the settings dock's first width: rank, alpha and every training field fit without scrolling
APP_NAME = "LoRA Studio"
DOCS = (("README", "set-up, the window, the command line"), ("ARCHITECTURE", "how the code is laid out"))  # .md files


def window_title(project_name: str | None, modified: bool = False) -> str:
    """``project1.toml — LoRA Studio`` (``*`` first while it has unsaved changes; ``Untitled`` before
    the first save).  The application's name comes last: Qt appends its display name to any title
    that does not already end with it, which doubled the name ("LoRA Studio — x.toml — LoRA Studio")."""
    return f"{'*' if modified else ''}{project_name or 'Untitled'} — {APP_NAME}"


def about_text() -> str:
    """The About box's rich text: version, Python, Qt, PySide6, torch (and transformers when installed)."""
    import platform
    from importlib import metadata

    import PySide6
    from PySide6.QtCore import qVersion

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = [("Python", platform.python_version()), ("Qt", qVersion()), ("PySide6", PySide6.__version__),
                 ("PyTorch", version("torch")), ("transformers", version("transformers")),
                 ("pyqtgraph", version("pyqtgraph"))]
    rows = "".join(f"<tr><td>{name}&nbsp;&nbsp;</td><td>{value}</td></tr>" for name, value in libraries)
    return (f"<h3>{APP_NAME} {lora_studio.core.__version__}</h3>"
            "<p>Choose layers, train a LoRA adapter, watch it learn and export it, "
            "from the window or with <code>lora-studio</code> on the command line.</p>"
            f"<table>{rows}</table>"
            f"<p>{' · '.join(doc_links())}<br><code>lora-studio --help</code> lists the commands.</p>")


def doc_links() -> list[str]:
    """README and ARCHITECTURE as links to the files of this checkout, or their names where the
    installed copy has no source tree beside it (a wheel, a bundle)."""
    root = Path(lora_studio.core.__file__).resolve().parent.parent  # core/ sits at the checkout's root
    links = []
    for stem, what in DOCS:
        name = f"{stem}.md"
        path = root / name
        shown = f"<a href='{QUrl.fromLocalFile(str(path)).toString()}'>{name}</a>" if path.is_file() else name
        links.append(f"{shown} ({what})")
    return links


def _scroll_area(widget: QWidget, name: str) -> QScrollArea:
    """``widget`` in a frameless scroll area that resizes it: it scrolls only below its own minimum size."""
    area = QScrollArea()
    area.setObjectName(name)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    return area


def let_form_values_wrap(root: QWidget) -> None:
    """Every label shown as a value in a form under ``root`` wraps: a long reading ("160 MiB measured
    so far (process memory…)") gets a second line in a narrow dock instead of widening it."""
    for form in root.findChildren(QFormLayout):
        for row in range(form.rowCount()):
            item = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            label = item.widget() if item is not None else None
            if isinstance(label, QLabel):
                label.setWordWrap(True)


def let_combo_boxes_shrink(root: QWidget, characters: int = 16) -> None:
    """No combo box under ``root`` sets the window's minimum width: each keeps room for at least
    ``characters`` characters (or its own minimum), grows with its column, and elides longer items
    (the popup lists them in full).  A combo box sized to its longest item ("Digits — a small CNN
    meets rotated digits (CPU, seconds)") made the window 1586 px wide."""
    for combo in root.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(combo.minimumContentsLength() or characters)
        policy = combo.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Policy.Expanding)
        combo.setSizePolicy(policy)
