"""The Try tab: the model with its adapter beside the base model (adapters off), on the user's own inputs.

A line at the top always says what is tried (a paused run's live model, the finished run's model,
or a folder opened with "Open adapter…"; :class:`~lora_studio.app.state.try_runner.TryRunner`
keeps the sources).  The page below follows the model's task:

* classifiers — inputs (a line per text, or images picked, dropped or taken from a folder), Top-k
  and Run; a :class:`~lora_studio.app.widgets.prediction_table.PredictionTable` with the adapted
  top-k beside the base top-k, rows whose top label changed marked;
* causal LMs — a prompt, max new tokens, temperature, top-p, seed (and the chat template when the
  tokenizer has one), Run and Stop; a :class:`~lora_studio.app.widgets.generation_view.GenerationView`
  where Base and Adapted grow token by token.

Requests run on the runner's workers; errors show in a notice bar, never as a traceback.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import GeneratedPiece, GenerationSettings

from ..state.project_files import StudioSettings
from ..state.run_controller import RunController
from ..state.session import StudioSession
from ..state.try_runner import TryRunner
from ..state.try_sources import NOTHING_TO_TRY, GenerationOutcome, PredictOutcome, TrySource
from ..widgets.flow_layout import flow_bar
from ..widgets.generation_view import GenerationView
from ..widgets.notice_bar import NoticeBar
from ..widgets.page_stack import PageStack
from ..widgets.prediction_table import PredictionTable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EMPTY_PAGE, CLASSIFY_PAGE, GENERATE_PAGE = range(3)
FOLDER_MARKERS = ("run.toml", "adapter_config.json", "config.json", "model.safetensors")  # a folder to open
DEFAULT_SETTINGS = GenerationSettings()


def image_files(paths: list[str | Path]) -> list[str]:
    """The image files among ``paths``, a folder standing for the images directly inside it (sorted)."""
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(str(path))
    return found


def _split_page(top: QWidget, answers: QWidget) -> tuple[QWidget, QSplitter]:
    """A page of the tab: the inputs above, the answers below (three times as tall), split so the
    user can give either more room; neither collapses away."""
    splitter = QSplitter(Qt.Orientation.Vertical)
    splitter.addWidget(top)
    splitter.addWidget(answers)
    splitter.setStretchFactor(0, 1)
    splitter.setStretchFactor(1, 3)
    splitter.setChildrenCollapsible(False)
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(splitter)
    return page, splitter


def _labelled(text: str, widget: QWidget) -> QWidget:
    """A label and its field kept together when a flow bar wraps."""
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    label = QLabel(text)
    label.setBuddy(widget)
    layout.addWidget(label)
    layout.addWidget(widget)
    return holder


class TryPanel(QWidget):
    """The source line, the page for the model's task, and the results."""

    def __init__(self, session: StudioSession, runner: TryRunner | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.runner = runner or TryRunner(RunController.for_session(session), parent=self)
        self.images: list[str] = []
        self._task: str | None = None
        self._source_key: tuple | None = None  # which model the results shown belong to
        self.setAcceptDrops(True)
        self._build()
        self.runner.sig_sources_changed.connect(self._on_sources)
        self.runner.sig_source_changed.connect(self._on_source)
        self.runner.sig_busy_changed.connect(self._on_busy)
        self.runner.sig_opening.connect(self._on_opening)
        self.runner.sig_predictions.connect(self._on_predictions)
        self.runner.sig_pieces.connect(self._on_pieces)
        self.runner.sig_generation_finished.connect(self._on_generation_finished)
        self.runner.sig_error.connect(self._on_error)
        self._on_sources(self.runner.sources())
        self._on_source(self.runner.current())
        self._on_busy(False)

    # -- public API --------------------------------------------------------------------------------
    def run(self) -> int | None:
        """Run the page's request (predictions or a generation); returns its id, None when refused."""
        self.notice.show_notice("")
        if self._task == "causal-lm":
            return self._generate()
        return self._predict()

    def stop(self) -> None:
        """Stop the request in progress (a generation ends within one token)."""
        self.runner.stop()

    def add_images(self, paths: list[str | Path]) -> int:
        """Add the image files among ``paths`` (folders: their images) to the inputs; returns how many."""
        found = [p for p in image_files(paths) if p not in self.images]
        self.images += found
        self._show_images()
        return len(found)

    def clear_images(self) -> None:
        """No image inputs."""
        self.images = []
        self._show_images()

    def open_folder(self, path: str | Path) -> None:
        """Open a run folder, adapter folder or merged export to try (on a worker)."""
        self.runner.open_folder(path)

    def generation_settings(self) -> GenerationSettings:
        """The generation settings the fields hold."""
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens.value(), temperature=self.temperature.value(),
            top_p=self.top_p.value(), seed=self.seed.value(),
            chat_template=self.chat_template.isChecked() if not self.chat_template.isHidden() else True)

    def text_inputs(self) -> list[str]:
        """The non-empty lines of the text box, one input each."""
        return [line.strip() for line in self.inputs_edit.toPlainText().splitlines() if line.strip()]

    def wait_idle(self, timeout_ms: int = 30_000) -> bool:
        """Stop what runs and wait for the workers (the window's close, tests)."""
        return self.runner.wait_idle(timeout_ms)

    # -- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("Which model the tab tries: a paused run, the finished run, or an opened folder")
        self.source_combo.activated.connect(self._on_combo)
        self.open_button = QPushButton("Open adapter…")
        self.open_button.setToolTip("Try a run folder, an adapter folder or a merged export from disk")
        self.open_button.clicked.connect(self._ask_folder)
        source_row = QHBoxLayout()
        source_row.addWidget(QLabel("Trying:"))
        source_row.addWidget(self.source_combo, 1)
        source_row.addWidget(self.open_button)
        self.source_label = QLabel(NOTHING_TO_TRY)
        self.source_label.setObjectName("try_source")
        self.source_label.setWordWrap(True)
        self.source_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.source_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice = NoticeBar("Details…")
        self.notice.sig_action.connect(self._show_details)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        self.pages = PageStack()
        self.pages.addWidget(self._empty_page())
        self.pages.addWidget(self._classify_page())
        self.pages.addWidget(self._generate_page())

        layout = QVBoxLayout(self)
        layout.addLayout(source_row)
        layout.addWidget(self.source_label)
        layout.addWidget(self.notice)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.status_label)

    def _empty_page(self) -> QWidget:
        page = QWidget()
        self.empty_label = QLabel(
            "Nothing to try yet.\n\nTrain a run, pause it, or open an adapter folder (Open adapter…): the model "
            "with its adapter and the base model (adapters off) then answer the same inputs side by side.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.empty_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 12, 0, 0)
        layout.addWidget(self.empty_label)
        layout.addStretch(1)
        return page

    def _classify_page(self) -> QWidget:
        self.inputs_edit = QPlainTextEdit()
        self.inputs_edit.setPlaceholderText("One input per line, e.g.\nthe match went to extra time\n"
                                            "shares fell after the report")
        self.inputs_edit.setMinimumHeight(48)
        self.add_images_button = QPushButton("Add images…")
        self.add_images_button.clicked.connect(self._ask_images)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self._ask_image_folder)
        self.clear_images_button = QPushButton("Clear")
        self.clear_images_button.clicked.connect(self.clear_images)
        self.images_label = QLabel("No images yet: add some, or drop files or a folder on this tab")
        self.images_label.setWordWrap(True)
        self.image_bar = flow_bar(self.add_images_button, self.add_folder_button, self.clear_images_button,
                                  self.images_label)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 20)
        self.top_k.setValue(3)
        self.top_k.setToolTip("How many of the most likely labels each side shows")
        self.classify_run = QPushButton("Run")
        self.classify_run.setToolTip("Predict every input with the adapted and the base model")
        self.classify_run.clicked.connect(self.run)
        self.classify_stop = QPushButton("Stop")
        self.classify_stop.clicked.connect(self.stop)
        controls = flow_bar(_labelled("Top-k", self.top_k), self.classify_run, self.classify_stop)
        self.table = PredictionTable()

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.inputs_edit, 1)
        top_layout.addWidget(self.image_bar)
        top_layout.addWidget(controls)
        page, self.classify_splitter = _split_page(top, self.table)
        self._classify_top = top
        return page

    def _generate_page(self) -> QWidget:
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("A prompt, e.g. Once upon a time")
        self.prompt_edit.setMinimumHeight(40)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(1, 4096)
        self.max_new_tokens.setValue(DEFAULT_SETTINGS.max_new_tokens)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 5.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setDecimals(2)
        self.temperature.setValue(DEFAULT_SETTINGS.temperature)
        self.temperature.setToolTip("0 is greedy: the most likely token every time")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.01, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setDecimals(2)
        self.top_p.setValue(DEFAULT_SETTINGS.top_p)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(DEFAULT_SETTINGS.seed)
        self.seed.setToolTip("The same seed gives the same text; base and adapted sample alike")
        self.chat_template = QCheckBox("Chat template")
        self.chat_template.setChecked(DEFAULT_SETTINGS.chat_template)
        self.chat_template.setToolTip("Wrap the prompt in the tokenizer's chat template")
        self.chat_template.hide()
        self.generate_run = QPushButton("Run")
        self.generate_run.setToolTip("Generate with the base and the adapted model, token by token")
        self.generate_run.clicked.connect(self.run)
        self.generate_stop = QPushButton("Stop")
        self.generate_stop.setToolTip("Stop generating (within one token); the text so far stays")
        self.generate_stop.clicked.connect(self.stop)
        controls = flow_bar(_labelled("Max new tokens", self.max_new_tokens),
                            _labelled("Temperature", self.temperature),
                            _labelled("Top-p", self.top_p), _labelled("Seed", self.seed), self.chat_template,
                            self.generate_run, self.generate_stop)
        self.generation = GenerationView()

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.prompt_edit, 1)
        top_layout.addWidget(controls)
        page, _splitter = _split_page(top, self.generation)
        return page

    # -- requests ----------------------------------------------------------------------------------
    def _predict(self) -> int | None:
        images = self._task == "image-classification"
        inputs = list(self.images) if images else self.text_inputs()
        if not inputs:
            self.notice.show_notice("Add images to predict (Add images…, Add folder…, or drop them here)" if images
                                    else "Type one input per line, then press Run")
            self.notice.action_button.hide()
            return None
        request = self.runner.predict(inputs, self.top_k.value())
        if request is not None:
            self.table.show_inputs(inputs, images=images)
            self.status_label.setText(f"Predicting {len(inputs)} input{'s' if len(inputs) != 1 else ''}…")
        return request

    def _generate(self) -> int | None:
        prompt = self.prompt_edit.toPlainText()
        if not prompt.strip():
            self.notice.show_notice("Type a prompt, then press Run")
            self.notice.action_button.hide()
            return None
        request = self.runner.generate(prompt, self.generation_settings())
        if request is not None:
            self.generation.clear()
            self.status_label.setText("Generating…")
        return request

    # -- the runner's signals ----------------------------------------------------------------------
    def _on_sources(self, sources: list[TrySource]) -> None:
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        for source in sources:
            self.source_combo.addItem(source.title, source.kind)
            self.source_combo.setItemData(self.source_combo.count() - 1, source.title, Qt.ItemDataRole.ToolTipRole)
        if not sources:
            self.source_combo.addItem("Nothing to try yet", None)
        current = self.runner.current()
        index = self.source_combo.findData(current.kind) if current is not None else 0
        self.source_combo.setCurrentIndex(max(index, 0))
        self.source_combo.setEnabled(bool(sources))
        self.source_combo.blockSignals(False)

    def _on_source(self, source: TrySource | None) -> None:
        if source is not None:
            index = self.source_combo.findData(source.kind)
            if index >= 0 and index != self.source_combo.currentIndex():
                self.source_combo.blockSignals(True)
                self.source_combo.setCurrentIndex(index)
                self.source_combo.blockSignals(False)
        task = source.task if source is not None else None
        key = (source.kind, id(source.loaded), source.folder) if source is not None else None
        if key != self._source_key:  # another model: the results shown are not its
            if self.images and task == "image-classification":
                self.table.show_inputs(self.images, images=True)
            else:
                self.table.clear_rows()
            self.generation.clear()
            if self.status_label.text() and not self.status_label.text().startswith("Opening"):
                self.status_label.setText("")
        self._task, self._source_key = task, key
        if source is None:
            self.source_label.setText(NOTHING_TO_TRY)
            self.pages.setCurrentIndex(EMPTY_PAGE)
            return
        what = {"causal-lm": "a causal language model", "image-classification": "an image classifier",
                "sequence-classification": "a text classifier"}.get(task or "", task or "a model")
        line = (f"{source.title}: {what}, adapted beside its base (adapters off)" if source.has_adapter else
                f"{source.title}: {what} without an adapter (merged, or fully fine-tuned): no base to compare")
        self.source_label.setText(line + (f". Note: {source.note}" if source.note else ""))
        self.source_label.setToolTip(source.folder)
        if task == "causal-lm":
            self.chat_template.setVisible(source.has_chat_template)
            self.pages.setCurrentIndex(GENERATE_PAGE)
        else:
            images = task == "image-classification"
            self.inputs_edit.setVisible(not images)
            self.image_bar.setVisible(images)
            self.pages.setCurrentIndex(CLASSIFY_PAGE)
            # Images need only their button bar above the table; texts get a box of a few lines.
            top = self._classify_top.sizeHint().height() if images else 6 * self.fontMetrics().lineSpacing()
            self.classify_splitter.setSizes([top, max(self.classify_splitter.height() - top, top)])

    def _on_busy(self, busy: bool) -> None:
        for button in (self.classify_stop, self.generate_stop):
            button.setEnabled(busy)

    def _on_opening(self, path: str) -> None:
        self.open_button.setEnabled(not path)
        if path:
            self.status_label.setText(f"Opening {path}…")
        elif self.status_label.text().startswith("Opening"):
            self.status_label.setText("")

    def _on_predictions(self, outcome: PredictOutcome) -> None:
        self.table.show_predictions(outcome.predictions, images=self._task == "image-classification")
        changed = len(self.table.changed_rows())
        count = len(outcome.predictions)
        at = f" at step {outcome.step}" if outcome.step is not None else ""
        self.status_label.setText(f"{count} input{'s' if count != 1 else ''}{at}: the top label changed for "
                                  f"{changed} (marked ✱ changed)" if changed else
                                  f"{count} input{'s' if count != 1 else ''}{at}: the same top label for all")

    def _on_pieces(self, pieces: list[GeneratedPiece]) -> None:
        self.generation.add_pieces(pieces)

    def _on_generation_finished(self, outcome: GenerationOutcome) -> None:
        self.generation.finish(stopped=outcome.stopped)
        at = f" at step {outcome.step}" if outcome.step is not None else ""
        self.status_label.setText(("Stopped" if outcome.stopped else "Done") + at)

    def _on_error(self, message: str) -> None:
        self.notice.show_notice(message)
        self.notice.action_button.setVisible(bool(self.runner.last_details))
        if self.status_label.text().endswith("…"):
            self.status_label.setText("")

    def _show_details(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "What went wrong", self.notice.label.text(), parent=self)
        box.setDetailedText(self.runner.last_details)
        box.open()  # not exec(): the window stays responsive

    # -- user actions -----------------------------------------------------------------------------
    def _on_combo(self, index: int) -> None:
        kind = self.source_combo.itemData(index)
        if kind:
            self.runner.select(kind)

    def _ask_folder(self) -> None:
        settings = StudioSettings()
        folder = QFileDialog.getExistingDirectory(self, "Open a run folder, adapter folder or merged export",
                                                  settings.last_folder("try"))
        if folder:
            settings.set_last_folder("try", str(Path(folder).parent))
            self.open_folder(folder)

    def _ask_images(self) -> None:
        settings = StudioSettings()
        pattern = " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        paths, _ = QFileDialog.getOpenFileNames(self, "Images to try", settings.last_folder("try_images"),
                                                f"Images ({pattern})")
        if paths:
            settings.set_last_folder("try_images", str(Path(paths[0]).parent))
            self.add_images(paths)

    def _ask_image_folder(self) -> None:
        settings = StudioSettings()
        folder = QFileDialog.getExistingDirectory(self, "A folder of images to try", settings.last_folder("try_images"))
        if folder:
            settings.set_last_folder("try_images", folder)
            if not self.add_images([folder]):
                self.notice.show_notice(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
                self.notice.action_button.hide()

    def _show_images(self) -> None:
        count = len(self.images)
        self.images_label.setText(f"{count} image{'s' if count != 1 else ''}" if count
                                  else "No images yet: add some, or drop files or a folder on this tab")
        if count:
            self.table.show_inputs(self.images, images=True)
        else:
            self.table.clear_rows()

    # -- drag and drop ------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt's name)
        # Images and folders are the tab's; anything else (a project file) is left to the window.
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if any(p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            self.handle_drop(paths)
            event.acceptProposedAction()

    def handle_drop(self, paths: list[str]) -> str:
        """Dropped ``paths``: a run or adapter folder opens; images (or a folder of them) become the inputs."""
        first = Path(paths[0])
        if first.is_dir() and any((first / marker).exists() for marker in FOLDER_MARKERS):
            self.open_folder(first)
            return f"Opening {first.name}"
        added = self.add_images(paths)
        if added:
            if self._task not in (None, "image-classification"):
                self.notice.show_notice("Images were added, but the model tried is not an image classifier")
                self.notice.action_button.hide()
            return f"{added} image{'s' if added != 1 else ''} added"
        self.notice.show_notice("Drop images, a folder of images, or a run or adapter folder here")
        self.notice.action_button.hide()
        return "nothing to try in what was dropped"
