"""The model picker: a built-in demo, a torchvision model by name (a searchable list), a
transformers hub id or local folder, a Python file with a factory function, or a checkpoint file.

"Load" loads the choice on a worker thread: the meta-device build arrives first (the layer
tree appears at once, and the session makes the config for the new model by its carry-over
rule), then the weights; a busy bar and a stage line show progress, and a failure is shown in
place with its message.  What the user set that could not carry over is named in a notice bar
with Undo (which loads the previous model again with the previous config).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    DEMOS,
    MODEL_SOURCES,
    TASKS,
    LoadedModel,
    ModelConfig,
    RunConfig,
    parse_model_spec,
    torchvision_names,
)

from ..state.model_loading import LoadingStage, MetaModelBuilt, load_meta_then_weights
from ..state.session import StudioSession
from ..state.workers import FunctionWorker
from ..widgets.notice_bar import NoticeBar
from ..widgets.page_stack import PageStack
from ..widgets.path_edit import PathEdit

SOURCE_TITLES = {  # config.model.source -> what the picker shows
    "demo": "Built-in demo",
    "torchvision": "torchvision",
    "transformers": "transformers (hub id or folder)",
    "python": "Python file + factory",
}
CHECKPOINT = "checkpoint"  # a page, not a source: a torchvision or python model plus a weights file
SOURCES = (
    # Core's sources, the demo first (it needs no files and no network), then the checkpoint page.
    *((s, SOURCE_TITLES.get(s, s)) for s in sorted(MODEL_SOURCES, key=lambda s: s != "demo")),
    (CHECKPOINT, "Checkpoint file"),
)
DEFAULT_TASK = "sequence-classification"  # what most hub models are fine-tuned for
DEMO_TITLES = {"digits": "Digits — a small CNN meets rotated digits (CPU, seconds)",
               "text": "Text — MiniLM sorts sentences into topics",
               "story": "Story — a small GPT-2 learns a pirate's voice (causal LM, CPU)",
               "chat": "Chat — the small GPT-2 learns a chat format (instruction tuning, CPU)"}


class ModelPanel(QWidget):
    """Pick a model source, fill in its page, press Load."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._worker: FunctionWorker | None = None
        self.confirm_change: Callable[[], bool] | None = None
        """Asked before the user loads another model (the window asks about unsaved changes);
        False cancels the load."""

        self.source_combo = QComboBox()
        for key, title in SOURCES:
            self.source_combo.addItem(title, key)
        self.pages = PageStack()

        # demo
        self.demo_combo = QComboBox()
        for name in DEMOS:
            self.demo_combo.addItem(DEMO_TITLES.get(name, name), name)
        pages: dict[str, QWidget] = {}  # source -> its page, shown in the order of SOURCES
        pages["demo"] = self._page(("Demo", self.demo_combo),
                                   note="Opens the demo's whole run config: model, data, targets, training.")
        # torchvision
        self.tv_search = QLineEdit(placeholderText="Search torchvision models (e.g. resnet, vit)")
        self.tv_list = QListWidget()
        self.tv_list.setMinimumHeight(90)
        self.tv_weights = QComboBox()
        self.tv_weights.addItems(["default", "random"])
        self.tv_weights.setToolTip("default: the pretrained weights (from the cache, else downloaded); random: none")
        pages["torchvision"] = self._page(("Search", self.tv_search), ("Model", self.tv_list),
                                          ("Weights", self.tv_weights))
        self._tv_names: list[str] | None = None
        # transformers
        self.hf_name = PathEdit("hub id (e.g. gpt2) or a local model folder", folder=True)
        self.hf_task = QComboBox()
        self.hf_task.addItems(TASKS)
        self.hf_task.setCurrentText(DEFAULT_TASK)
        pages["transformers"] = self._page(("Model", self.hf_name), ("Task", self.hf_task))
        # python factory
        self.py_file = PathEdit("path/to/model.py", file_filter="Python files (*.py)")
        self.py_factory = QLineEdit(placeholderText="factory function, e.g. build_model")
        pages["python"] = self._page(("File", self.py_file), ("Factory", self.py_factory))
        # checkpoint
        self.ckpt_file = PathEdit("weights.safetensors", file_filter="Weights (*.safetensors *.pt *.pth *.bin)")
        self.ckpt_arch = QLineEdit(placeholderText="torchvision:resnet18  or  path/to/model.py:build_model")
        pages[CHECKPOINT] = self._page(("Checkpoint", self.ckpt_file), ("Architecture", self.ckpt_arch),
                                       note="safetensors are read directly; legacy .pt/.bin files with a warning, never unpickled unsafely.")
        for key, _ in SOURCES:
            self.pages.addWidget(pages[key])  # a source core gained without a page here fails loudly

        self.load_button = QPushButton("Load model")
        self.load_button.setDefault(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: loading reports stages, not a fraction
        self.progress.setMaximumHeight(10)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.status_label = QLabel("No model loaded.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice_bar = NoticeBar("Undo")
        self.notice_bar.action_button.setToolTip("Load the previous model again, with the settings it had")

        box = QGroupBox("Model")
        box_layout = QVBoxLayout(box)
        box_layout.addWidget(self.source_combo)
        box_layout.addWidget(self.pages)
        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.progress, 1)
        box_layout.addLayout(row)
        box_layout.addWidget(self.status_label)
        box_layout.addWidget(self.notice_bar)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(box)

        self.source_combo.currentIndexChanged.connect(self._source_changed)
        self.tv_search.textChanged.connect(self._filter_torchvision)
        self.load_button.clicked.connect(self.load_from_page)
        session.sig_model_failed.connect(self._failed)
        session.sig_model_notice.connect(self._show_notice)
        self.notice_bar.sig_action.connect(self.undo_model_change)
        self._source_changed(0)

    # -- public API ----------------------------------------------------------------------------
    def is_loading(self) -> bool:
        """A model is loading on the worker thread."""
        return self._worker is not None and self._worker.is_running()

    def wait_idle(self, msecs: int = 30_000) -> bool:
        """Block until a running load has ended (closing the window: Qt aborts the process when a
        QThread is destroyed while it still runs)."""
        return self._worker.wait(msecs) if self._worker is not None else True

    def open_demo(self, name: str) -> None:
        """Open demo ``name``: in a fresh window its whole run config (model, data, targets,
        training); after another model, what the user set by hand carries over (the session's rule)."""
        if self._confirmed():
            self.load(ModelConfig(source="demo", name=name))

    def load_from_page(self) -> None:
        """Load what the current page describes (the Load button)."""
        source = self.source_combo.currentData()
        if source == "demo":
            self.open_demo(self.demo_combo.currentData())
            return
        try:
            config = self.model_config_from_page()
        except ValueError as exc:
            self._failed(str(exc))
            return
        if self._confirmed():
            self.load(config)

    def undo_model_change(self) -> bool:
        """Go back to the model and config from before the last model change (the notice's Undo);
        False when there is nothing to undo."""
        config = self.session.undo_model_change()
        if config is None:
            return False
        self.load(config.model, exact=config)
        return True

    def model_config_from_page(self) -> ModelConfig:
        """The ``[model]`` section the current page describes; a missing entry raises with a message."""
        source = self.source_combo.currentData()
        if source == "torchvision":
            item = self.tv_list.currentItem()
            if item is None:
                raise ValueError("choose a torchvision model in the list")
            return ModelConfig(source="torchvision", name=item.text(), weights=self.tv_weights.currentText())
        if source == "transformers":
            if not self.hf_name.text():
                raise ValueError("enter a hub id or choose a local model folder")
            return ModelConfig(source="transformers", name=self.hf_name.text(), task=self.hf_task.currentText())
        if source == "python":
            if not self.py_file.text() or not self.py_factory.text():
                raise ValueError("choose a Python file and name its factory function")
            return ModelConfig(source="python", name=f"{self.py_file.text()}:{self.py_factory.text().strip()}")
        if source == CHECKPOINT:
            arch, weights = self.ckpt_arch.text().strip(), self.ckpt_file.text()
            if not arch or not weights:
                raise ValueError("choose a checkpoint file and say which architecture it fits")
            # "source:name" is core's model spec; a bare "file.py:function" means a python factory.
            if not arch.startswith(tuple(f"{known}:" for known in MODEL_SOURCES)):
                arch = f"python:{arch}"
            spec = parse_model_spec(arch)
            if spec.source == "torchvision":
                return ModelConfig(source="torchvision", name=spec.name, weights=weights)
            if spec.source == "python":
                return ModelConfig(source="python", name=spec.name, checkpoint=weights)
            raise ValueError(f"a checkpoint file fits a torchvision or python model, not a {spec.source} one")
        raise ValueError(f"choose a model source, not {source!r}")

    def select_source(self, source: str) -> None:
        """Show the page of model source ``source`` (one of :data:`SOURCES`' keys), as picking it does."""
        self._select(self.source_combo, source)

    def show_model_config(self, config: ModelConfig) -> None:
        """Fill the pages from ``config`` (a project was opened) without loading."""
        if config.source == "demo":
            self._select(self.source_combo, "demo")
            self._select(self.demo_combo, config.name)
        elif config.source == "torchvision" and config.weights not in ("default", "random"):
            self._select(self.source_combo, CHECKPOINT)
            self.ckpt_arch.setText(f"torchvision:{config.name}")
            self.ckpt_file.edit.setText(config.weights)
        elif config.source == "torchvision":
            self._select(self.source_combo, "torchvision")
            self.tv_search.setText(config.name)
            self.tv_weights.setCurrentText(config.weights)
        elif config.source == "transformers":
            self._select(self.source_combo, "transformers")
            self.hf_name.edit.setText(config.name)
            self.hf_task.setCurrentText(config.task or DEFAULT_TASK)
        elif config.checkpoint:
            self._select(self.source_combo, CHECKPOINT)
            self.ckpt_arch.setText(config.name)
            self.ckpt_file.edit.setText(config.checkpoint)
        else:
            self._select(self.source_combo, "python")
            file, _, factory = config.name.rpartition(":")
            self.py_file.edit.setText(file)
            self.py_factory.setText(factory)

    def load(self, config: ModelConfig, *, exact: RunConfig | None = None) -> None:
        """Load ``config`` off the UI thread; when its build arrives the session's config becomes
        ``exact`` (an opened project) or what the carry-over rule makes of the current one."""
        if self.is_loading():
            self.status_label.setText("Still loading the previous model; wait for it to finish.")
            return
        self.notice_bar.show_notice("")
        self.session.begin_model_change(config, exact=exact)
        self.show_model_config(config)
        description = f"{config.source}:{config.name}"
        data_kind = self.session.config.data.kind
        # Collect the window's cyclic garbage (closed dialogs, replaced views and their Qt wrappers)
        # now, while no loader runs: the collector firing on the UI thread in the middle of a load,
        # with transformers' threads building the model, segfaulted the process in the app's tests.
        gc.collect()
        self._worker = worker = FunctionWorker(lambda on_event: load_meta_then_weights(config, on_event,
                                                                                        data_kind=data_kind), self)
        worker.sig_event.connect(self._event)
        worker.sig_finished.connect(self._finished)
        worker.sig_failed.connect(self._worker_failed)  # a bound method: queued to the UI thread
        self.load_button.setEnabled(False)
        self.progress.show()
        self.status_label.setStyleSheet("")
        self.status_label.setText(f"Loading {description}…")
        self.session.sig_model_loading.emit(description)
        worker.start()

    # -- worker events ---------------------------------------------------------------------------
    def _event(self, event: object) -> None:
        if isinstance(event, MetaModelBuilt):
            self.session.set_meta_model(event.model, event.head, event.task)
        elif isinstance(event, LoadingStage):
            self.status_label.setText(event.text)

    def _finished(self, loaded: LoadedModel) -> None:
        self._done()
        self.session.set_loaded(loaded)
        notes = "; ".join(loaded.notes)
        self.status_label.setText(f"Loaded {loaded.name_or_path} ({loaded.task})" + (f" — {notes}" if notes else ""))

    def _show_notice(self, text: str) -> None:
        self.notice_bar.show_notice(f"Model changed: {text}." if text else "")

    def _confirmed(self) -> bool:
        return self.confirm_change is None or self.confirm_change()

    def _worker_failed(self, message: str, _details: str) -> None:
        self.session.sig_model_failed.emit(message)

    def _failed(self, message: str) -> None:
        self._done()
        self.status_label.setStyleSheet("color: #c0392b")
        self.status_label.setText(message)

    def _done(self) -> None:
        # The worker's thread was told to quit just before this slot ran; let it end now, so no
        # window teardown ever meets a running thread.
        self.wait_idle(5_000)
        self.load_button.setEnabled(True)
        self.progress.hide()

    # -- pages -----------------------------------------------------------------------------------
    @staticmethod
    def _page(*rows: tuple[str, QWidget], note: str = "") -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        for label, widget in rows:
            form.addRow(label, widget)
        if note:
            hint = QLabel(note)
            hint.setWordWrap(True)
            hint.setStyleSheet("color: palette(mid)")
            form.addRow(hint)
        return page

    @staticmethod
    def _select(combo: QComboBox, data: str) -> None:
        index = combo.findData(data)
        combo.setCurrentIndex(index if index >= 0 else combo.findText(data))

    def _source_changed(self, index: int) -> None:
        self.pages.setCurrentIndex(index)
        if self.source_combo.currentData() == "torchvision" and self._tv_names is None:
            self._tv_names = torchvision_names()  # imports torchvision's registry: only when asked
            self._filter_torchvision(self.tv_search.text())

    def _filter_torchvision(self, text: str) -> None:
        if self._tv_names is None:
            return
        current = self.tv_list.currentItem().text() if self.tv_list.currentItem() else None
        needle = text.strip().lower()
        self.tv_list.clear()
        self.tv_list.addItems([n for n in self._tv_names if needle in n.lower()])
        exact = self.tv_list.findItems(text.strip() or (current or ""), Qt.MatchFlag.MatchExactly)
        if exact:
            self.tv_list.setCurrentItem(exact[0])
