"""The Data tab: choose a folder or file, map its columns, see a few samples and the class balance.

Every edit goes through ``session.try_update("data", ...)`` — the panel keeps no copy of
the data config — and every config change re-reads a preview on a :class:`FunctionWorker`
(core's :func:`preview_data`), so a large file never freezes the window.  A problem with
the data (a missing column, a label outside the label set) is shown beside the controls
with the very message training would stop with.

Then every file the preview counts is checked on a second worker (:class:`DataChecker`,
core's ``check_data``: each image decoded, each table row read) and the bad ones are listed
with their reason — the same check training applies, so the list is exactly what a run would
refuse or skip.  The bad-images choice (``data.bad_images``) sits beside the list, and the
kind picker offers only the kinds that fit the model's task (core's ``data_kind_problem``).
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    CHAT_TEMPLATE_CHOICES,
    DATA_FORMATS,
    DATA_KINDS,
    LOSS_ON_CHOICES,
    DataConfig,
    DataError,
    DataPreview,
    data_columns,
    data_kind_problem,
    preview_data,
    preview_rendered,
)

from ..state.data_check import DataChecker, DataCheckResult, check_key
from ..state.project_files import StudioSettings
from ..state.session import StudioSession
from ..state.workers import FunctionWorker
from ..widgets.class_balance_chart import ClassBalanceChart
from ..widgets.form_rows import row
from ..widgets.sample_preview import SamplePreview, thumbnail_images

KIND_TITLES = {  # data.kind -> what the user reads; the picker offers core's DATA_KINDS, in its order
    "image-folder": "Image folder (one sub-folder per class)",
    "text-classification": "Text classification (CSV or JSONL)",
    "causal-lm": "Language modelling (text or JSONL)",
    "digits": "Digits demo (built in)",
    "torchvision": "torchvision dataset (by name)",
}
BAD_IMAGE_TITLES = {  # data.bad_images -> what the user reads (core's BAD_IMAGE_ACTIONS)
    "error": "error: stop and name the file",
    "skip": "skip: leave bad files out (counted)",
}
MAX_LISTED = 500  # bad files listed one per line; the rest are counted in the last line
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")
NO_COLUMN = "(none)"
REFRESH_DELAY_MS = 120  # coalesce bursts of edits (typing a path) into one read
TEXT_GUESSES = ("text", "sentence", "content", "body", "review", "comment", "document", "input", "question")
LABEL_GUESSES = ("label", "labels", "class", "category", "target", "topic")


@dataclasses.dataclass(frozen=True)
class _PreviewResult:
    """What the worker read: columns (None: not a table), the preview or the error, and thumbnails."""

    generation: int  # which read this answers (older ones are dropped)
    data: DataConfig
    columns: list[str] | None
    preview: DataPreview | None
    error: str | None
    images: list[Any]
    rendered: Any = None  # a language model's first examples as training renders them (RenderedPreview)
    rendered_error: str = ""


def guess_kind(path: str, current: str, task: str | None = None) -> str:
    """The data kind a picked path suggests: folders hold images, .txt is language modelling,
    tables are classification unless language modelling was already chosen or the loaded model
    (``task``) is a language model; a Parquet/Arrow file or a datasets folder is language data then."""
    p = Path(path)
    language_model = current == "causal-lm" or task == "causal-lm"
    if p.is_dir():
        return "causal-lm" if task == "causal-lm" else "image-folder"
    if p.suffix.lower() == ".txt" or (language_model and p.suffix.lower() in (".parquet", ".arrow")):
        return "causal-lm"
    if p.suffix.lower() in TABLE_SUFFIXES:
        return "causal-lm" if language_model else "text-classification"
    return current


def guess_column(columns: list[str], guesses: tuple[str, ...], avoid: str | None = None) -> str | None:
    """The first column whose lower-cased name matches (then contains) a guess; None when nothing fits."""
    lowered = {c.lower(): c for c in columns if c != avoid}
    for guess in guesses:
        if guess in lowered:
            return lowered[guess]
    for guess in guesses:
        for low, original in lowered.items():
            if guess in low:
                return original
    return None


class DataPanel(QWidget):
    """Pick the training data, map its columns, preview it."""

    sig_preview_changed = Signal(object)
    """A preview was read (payload: the DataPreview, or None when the data has a problem)."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.preview: DataPreview | None = None
        self.columns: list[str] = []
        self._workers: list[FunctionWorker] = []  # kept alive until they finish
        self._generation = 0  # results of older reads are dropped
        self._answered = 0  # the newest read whose result is shown
        self._automap = False  # after a new file: fix a column mapping that does not fit it
        self._syncing = False  # widgets being set from the config: not an edit
        self.checker = DataChecker(self)
        self.check_result: DataCheckResult | None = None  # the newest check's answer
        self._checked_key: DataConfig | None = None  # what the newest check request was for
        self._kind_problems: dict[str, str | None] = {}
        self._build()
        self.checker.sig_checked.connect(self._on_checked)
        self.checker.sig_progress.connect(self._on_check_progress)
        self._refresh_timer = QTimer(self, singleShot=True, interval=REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self._start_read)
        session.sig_config_changed.connect(self._on_config_changed)
        session.sig_model_loaded.connect(self._on_model_loaded)
        self._shown_data: DataConfig | None = None
        self._on_config_changed(session.config)

    # -- public API -----------------------------------------------------------------------------------
    def choose_path(self, path: str) -> str | None:
        """Use ``path`` as the training data (as if picked in the file dialog); the kind follows it.
        Returns the validation message, or None when accepted."""
        data = self.session.config.data
        kind = guess_kind(path, data.kind, getattr(self.session.loaded, "task", None))
        self._automap = True
        # A new file brings its own label set: a stale one from the last file would refuse its labels.
        return self._update(kind=kind, train=path, label_names=None, validation=None)

    def is_reading(self) -> bool:
        """True while a preview is being read or its files checked."""
        return self._refresh_timer.isActive() or self._answered != self._generation or self.checker.is_checking()

    def bad_items(self) -> list[str]:
        """The lines of the bad-files list, as the user reads them."""
        return [self.bad_list.item(i).text() for i in range(self.bad_list.count())]

    def kind_problem(self, kind: str) -> str | None:
        """Why the kind picker disables ``kind`` for the current model (None: it is offered)."""
        return self._kind_problems.get(kind)

    def check_again(self) -> None:
        """Re-read the preview and check every file again (the files may have changed on disk)."""
        self._checked_key = None
        self._refresh_timer.start()

    def wait_idle(self, msecs: int = 30_000) -> None:
        """Stop the file check and let running reads end (the window calls it before closing)."""
        self.checker.stop(msecs)
        for worker in list(self._workers):
            worker.wait(msecs)

    # -- building ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.kind_combo = QComboBox()
        for kind in DATA_KINDS:
            self.kind_combo.addItem(KIND_TITLES.get(kind, kind), kind)
        self.kind_combo.currentIndexChanged.connect(self._on_kind_chosen)

        self.path_edit = QLineEdit(placeholderText="a folder of class sub-folders, or a .csv / .jsonl / .txt file")
        self.path_edit.editingFinished.connect(lambda: self._on_path_typed(self.path_edit, "train"))
        folder_button = QPushButton("Folder…")
        folder_button.clicked.connect(lambda: self._browse("train", folder=True))
        file_button = QPushButton("File…")
        file_button.clicked.connect(lambda: self._browse("train", folder=False))
        self.validation_edit = QLineEdit(placeholderText="optional: a separate validation file or folder")
        self.validation_edit.editingFinished.connect(lambda: self._on_path_typed(self.validation_edit, "validation"))
        validation_button = QPushButton("Browse…")
        validation_button.clicked.connect(lambda: self._browse("validation", folder=None))

        self.bad_images_combo = QComboBox()
        for action, title in BAD_IMAGE_TITLES.items():
            self.bad_images_combo.addItem(title, action)
        self.bad_images_combo.setToolTip(DataConfig.__dataclass_fields__["bad_images"].metadata["help"])
        self.bad_images_combo.currentIndexChanged.connect(self._on_bad_images_chosen)

        self.text_combo = self._column_combo("text_column")
        self.label_combo = self._column_combo("label_column")
        self.prompt_combo = self._column_combo("prompt_column")
        self.response_combo = self._column_combo("response_column")

        form = self._form = QFormLayout()
        form.addRow("Kind", self.kind_combo)
        form.addRow("Training data", row(self.path_edit, folder_button, file_button))
        form.addRow("Validation", row(self.validation_edit, validation_button))
        self.columns_row = row(QLabel("text"), self.text_combo, QLabel("label"), self.label_combo,
                                QLabel("prompt"), self.prompt_combo, QLabel("response"), self.response_combo)
        form.addRow("Columns", self.columns_row)
        form.addRow("Bad images", self.bad_images_combo)
        self.format_combo = self._choice_combo("format", DATA_FORMATS)
        self.template_combo = self._choice_combo("chat_template", CHAT_TEMPLATE_CHOICES, editable=True)
        self.loss_combo = self._choice_combo("loss_on", LOSS_ON_CHOICES)
        self.chat_row = row(QLabel("format"), self.format_combo, QLabel("template"), self.template_combo,
                            QLabel("loss on"), self.loss_combo)
        form.addRow("Chat", self.chat_row)

        self.error_label = QLabel(wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setProperty("role", "error")
        # The colour comes from the theme's QLabel[role="error"] (an inline colour would ignore the dark theme).
        self.summary_label = QLabel(wordWrap=True)
        self.summary_label.setProperty("role", "note")
        self.check_label = QLabel(wordWrap=True)
        self.check_label.setProperty("role", "note")
        self.recheck_button = QPushButton("Check again")
        self.recheck_button.setToolTip("Read every file again (after fixing or removing bad ones on disk)")
        self.recheck_button.clicked.connect(self.check_again)
        self.check_row = row(self.check_label, self.recheck_button)
        self.check_row.layout().setStretch(0, 1)
        self.bad_list = QListWidget()
        self.bad_list.setToolTip("Files (or table rows) training cannot use, and why")
        self.bad_list.setVisible(False)

        self.sample_preview = SamplePreview()
        self.balance_chart = ClassBalanceChart()
        # A language model's examples as training sees them: template applied, trained text shaded.
        self.rendered_view = QTextBrowser()
        self.rendered_view.setToolTip("The first examples as training renders them; the loss trains on the "
                                      "highlighted text only")
        self.rendered_view.setVisible(False)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.sample_preview)
        split.addWidget(self.rendered_view)
        split.addWidget(self.balance_chart)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([1, 1])  # half and half (the plot's size hint would otherwise take most)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.check_row)
        layout.addWidget(self.bad_list)
        layout.addWidget(split, 1)

    def _choice_combo(self, field: str, choices: tuple[str, ...], *, editable: bool = False) -> QComboBox:
        combo = QComboBox(minimumContentsLength=9)
        combo.addItems(list(choices))
        combo.setEditable(editable)  # a template may also be Jinja text of the user's own
        combo.setToolTip(DataConfig.__dataclass_fields__[field].metadata.get("help", ""))
        if editable:
            combo.lineEdit().editingFinished.connect(lambda: self._on_choice(field, combo.currentText()))
            combo.activated.connect(lambda _i: self._on_choice(field, combo.currentText()))
        else:
            combo.currentIndexChanged.connect(lambda _i: self._on_choice(field, combo.currentText()))
        return combo

    def _on_choice(self, field: str, value: str) -> None:
        if self._syncing or value == getattr(self.session.config.data, field):
            return
        self._update(**{field: value})

    def _column_combo(self, field: str) -> QComboBox:
        combo = QComboBox(minimumContentsLength=10)
        combo.currentIndexChanged.connect(lambda _i: self._on_column_chosen(field, combo))
        return combo

    # -- edits ----------------------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> str | None:
        error = self.session.try_update("data", **changes)
        if error is not None:
            self._show_error(error)
        return error

    def _on_kind_chosen(self, _index: int) -> None:
        if self._syncing:
            return
        kind = self.kind_combo.currentData()
        data = self.session.config.data
        train = data.train if kind != "digits" else None
        if kind != "digits" and train is None:
            # No file yet: the config cannot take this kind until one is picked; say so and wait.
            self._show_error(f"choose the training data for {KIND_TITLES.get(kind, kind).lower()}")
            return
        self._update(kind=kind, train=train)

    def _on_bad_images_chosen(self, _index: int) -> None:
        if self._syncing:
            return
        self._update(bad_images=self.bad_images_combo.currentData())

    def _on_path_typed(self, edit: QLineEdit, field: str) -> None:
        if self._syncing:
            return
        text = edit.text().strip() or None
        if text == getattr(self.session.config.data, field):
            return
        if field == "train" and text is not None:
            self.choose_path(text)
        else:
            self._update(**{field: text})

    def _browse(self, field: str, folder: bool | None) -> None:
        settings = StudioSettings()  # the studio's own file, which tests and the renderer redirect
        start = settings.last_folder("data")
        if folder is None:
            folder = self.session.config.data.kind == "image-folder"
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a data folder", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a data file", start,
                                                  "Data files (*.csv *.jsonl *.json *.txt);;All files (*)")
        if not path:
            return
        settings.set_last_folder("data", str(Path(path).parent if Path(path).is_file() else path))
        if field == "train":
            self.choose_path(path)
        else:
            self._update(validation=path)

    def _on_column_chosen(self, field: str, combo: QComboBox) -> None:
        if self._syncing or not combo.count():
            return
        value = combo.currentText()
        if field in ("prompt_column", "response_column"):
            other = "response_column" if field == "prompt_column" else "prompt_column"
            other_combo = self.response_combo if field == "prompt_column" else self.prompt_combo
            value = None if value == NO_COLUMN else value
            other_value = None if other_combo.currentText() == NO_COLUMN else other_combo.currentText()
            # Prompt and response go together: set both, so picking the first does not fail validation.
            if (value is None) != (other_value is None):
                self._show_error("choose both a prompt and a response column (or neither)")
                return
            self._update(**{field: value, other: other_value})
        else:
            self._update(**{field: value})

    # -- the config changed ---------------------------------------------------------------------------------
    def _on_config_changed(self, config: Any) -> None:
        self._update_kind_choices()
        data = config.data
        if data == self._shown_data:
            return  # another section changed
        only_bad_images = self._shown_data is not None and check_key(data) == check_key(self._shown_data)
        self._shown_data = data
        self._sync_widgets(data)
        if only_bad_images:
            self._show_check()  # the same files; only what training does with the bad ones changed
            return
        self._refresh_timer.start()

    def _on_model_loaded(self, _loaded: Any) -> None:
        self._update_kind_choices()
        self._show_head_note()
        if self.session.config.data.kind == "causal-lm":  # its tokenizer renders the training text
            self._refresh_timer.start()

    def _update_kind_choices(self) -> None:
        """Enable the kinds that fit the model's task; a disabled one's tooltip says why."""
        loaded = self.session.loaded
        model = self.session.config.model
        problems = {kind: data_kind_problem(kind, model, getattr(loaded, "task", None)) for kind in DATA_KINDS}
        if problems == self._kind_problems:
            return
        self._kind_problems = problems
        items = self.kind_combo.model()
        for index in range(self.kind_combo.count()):
            problem = problems.get(self.kind_combo.itemData(index))
            item = items.item(index)
            item.setEnabled(problem is None)
            item.setToolTip(f"Not for this model: {problem}" if problem else "")
        self._show_kind_problem()

    def _show_kind_problem(self) -> None:
        """Say so when the configured kind does not fit the model (a project opened with another model)."""
        problem = self._kind_problems.get(self.session.config.data.kind)
        if problem and not self.error_label.text():
            self._show_error(f"data.kind does not fit the model: {problem}; choose another kind")

    def _sync_widgets(self, data: DataConfig) -> None:
        self._syncing = True
        try:
            self.kind_combo.setCurrentIndex(max(0, self.kind_combo.findData(data.kind)))
            self.bad_images_combo.setCurrentIndex(max(0, self.bad_images_combo.findData(data.bad_images)))
            self._form.setRowVisible(self.bad_images_combo, data.kind == "image-folder")
            self.path_edit.setText(data.train or "")
            self.validation_edit.setText(data.validation or "")
            self._fill_columns(data)
            self._form.setRowVisible(self.chat_row, data.kind == "causal-lm")
            for combo, value in ((self.format_combo, data.format), (self.template_combo, data.chat_template),
                                 (self.loss_combo, data.loss_on)):
                combo.setCurrentText(value)
        finally:
            self._syncing = False

    def _fill_columns(self, data: DataConfig) -> None:
        """Offer the file's columns (plus the configured one, so a wrong mapping stays visible)."""
        table = data.kind in ("text-classification", "causal-lm") and data.format not in CONVERSATION_FORMATS
        self._form.setRowVisible(self.columns_row, table)
        self.columns_row.setEnabled(bool(self.columns))
        for combo, value, optional in (
            (self.text_combo, data.text_column, False),
            (self.label_combo, data.label_column, False),
            (self.prompt_combo, data.prompt_column, True),
            (self.response_combo, data.response_column, True),
        ):
            names = ([NO_COLUMN] if optional else []) + list(self.columns)
            shown = value if value is not None else NO_COLUMN
            if shown not in names:
                names.append(shown)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentText(shown)
        language_model = data.kind == "causal-lm"
        for widget, visible in ((self.label_combo, not language_model), (self.prompt_combo, language_model),
                                (self.response_combo, language_model)):
            widget.setVisible(visible)
            self._partner_label(widget).setVisible(visible)

    def _partner_label(self, combo: QComboBox) -> QWidget:
        """The caption left of a column combo in the columns row."""
        layout = self.columns_row.layout()
        return layout.itemAt(layout.indexOf(combo) - 1).widget()

    # -- reading the preview ---------------------------------------------------------------------------------
    def _start_read(self) -> None:
        self._generation += 1
        generation, data = self._generation, self.session.config.data
        self.summary_label.setText("reading…")
        if check_key(data) != self._checked_key:
            self._checked_key = check_key(data)
            self.check_label.setText("checking the files…")
            self.check_row.setVisible(data.kind in ("image-folder", "text-classification", "causal-lm"))
            self.checker.check(data)
        tokenizer = getattr(self.session.loaded, "tokenizer", None) if data.kind == "causal-lm" else None
        worker = FunctionWorker(lambda _on_event: _read(generation, data, tokenizer))
        # A bound method of this widget, not a lambda: Qt then queues the call to the UI thread
        # (a lambda has no thread of its own and would run on the worker's).
        worker.sig_finished.connect(self._on_read)
        self._workers.append(worker)
        worker.start()

    def _forget_finished_workers(self) -> None:
        for worker in [w for w in self._workers if not w.is_running()]:
            self._workers.remove(worker)

    def _on_read(self, result: _PreviewResult) -> None:
        self._forget_finished_workers()
        if result.generation != self._generation:
            return  # the config changed meanwhile; a newer read is on its way
        self._answered = result.generation
        if result.columns is not None:
            self.columns = result.columns
            if self._automap and self._apply_column_guesses(result.data):
                return  # the mapping changed: a new read follows
        elif result.data.kind not in ("text-classification", "causal-lm"):
            self.columns = []
        self._automap = False
        self._syncing = True
        try:
            self._fill_columns(result.data)
        finally:
            self._syncing = False
        self.preview = result.preview
        self.sample_preview.show_preview(result.preview, result.images)
        self._show_rendered(result)
        self.balance_chart.set_counts(result.preview.label_counts if result.preview else {})
        self._show_error(result.error or "")
        self._show_summary()
        self._show_kind_problem()
        self._show_check()
        self.sig_preview_changed.emit(result.preview)

    def _show_rendered(self, result: _PreviewResult) -> None:
        """The rendered examples with their trained characters highlighted (language models only)."""
        rendered = result.rendered
        self.rendered_view.setVisible(rendered is not None or bool(result.rendered_error))
        if rendered is None:
            self.rendered_view.setHtml(f"<p style='color:#b91c1c'>{html.escape(result.rendered_error)}</p>"
                                       if result.rendered_error else "")
            return
        self.rendered_view.setHtml(rendered_html(rendered))
        if rendered.format in CONVERSATION_FORMATS:  # detected: its rows have no text or prompt column to map
            self._form.setRowVisible(self.columns_row, False)

    def _apply_column_guesses(self, data: DataConfig) -> bool:
        """Map a new file's columns by their names when the current mapping does not fit; True if changed."""
        changes: dict[str, Any] = {}
        if data.text_column not in self.columns:
            guess = guess_column(self.columns, TEXT_GUESSES) or (self.columns[0] if self.columns else None)
            if guess:
                changes["text_column"] = guess
        text = changes.get("text_column", data.text_column)
        if data.kind == "text-classification" and data.label_column not in self.columns:
            guess = guess_column(self.columns, LABEL_GUESSES, avoid=text)
            guess = guess or next((c for c in reversed(self.columns) if c != text), None)
            if guess:
                changes["label_column"] = guess
        if data.kind == "causal-lm" and data.prompt_column is None:
            prompt, response = guess_column(self.columns, ("prompt", "instruction", "question")), guess_column(
                self.columns, ("response", "output", "answer", "completion"))
            if prompt and response:
                changes.update(prompt_column=prompt, response_column=response)
        self._automap = False
        return bool(changes) and self._update(**changes) is None

    # -- the file check -----------------------------------------------------------------------------------------
    def _on_check_progress(self, done: int, total: int) -> None:
        if total:
            self.check_label.setText(f"checking the files… {done:,} of {total:,}")

    def _on_checked(self, result: DataCheckResult) -> None:
        self.check_result = result
        self._show_check()

    def _current_check(self) -> Any:
        """The newest check's DataCheck when it is for the data shown, else None."""
        result = self.check_result
        if result is None or check_key(result.data) != check_key(self.session.config.data):
            return None
        return result.check

    def _show_check(self) -> None:
        """The check's counts, the bad files and what training will do with them."""
        result, data = self.check_result, self.session.config.data
        if result is None or check_key(result.data) != check_key(data):
            return  # the check for this data is still running (its progress is shown)
        check = result.check
        self.bad_list.clear()
        if check is None or not check.checked:
            self.check_label.setText("")  # nothing to check, or the data could not be read (the error says why)
            self.check_row.setVisible(False)
            self.bad_list.setVisible(False)
            return
        images = check.kind == "image-folder"
        what = "images" if images else "rows"
        text = f"Checked {check.checked:,} {what}: {check.good:,} good"
        bad = len(check.bad)
        if not bad:
            text += ", none bad."
        elif images and data.bad_images == "skip":
            text += f", {bad:,} bad: training leaves them out (bad images: skip)."
        elif images:
            text += (f", {bad:,} bad: training would stop at the first one. Choose “skip” under Bad images to "
                     "leave them out, or remove them.")
        else:
            text += f", {bad:,} with an empty cell: training refuses them. Fill the cells in or delete those rows."
        refuses = bad and not (images and data.bad_images == "skip")
        self.check_label.setText(text)
        self.check_label.setProperty("role", "error" if refuses else "note")
        self.check_label.style().unpolish(self.check_label)  # the theme's colour for the new role
        self.check_label.style().polish(self.check_label)
        self.check_row.setVisible(True)
        root = Path(data.train or "")
        for item in check.bad[:MAX_LISTED]:
            shown = _relative(item.path, root) if images else Path(item.path).name
            where = f"{shown}, row {item.row}" if item.row is not None else shown
            line = QListWidgetItem(f"{where}: {item.reason}")
            line.setToolTip(item.describe())
            self.bad_list.addItem(line)
        if bad > MAX_LISTED:
            self.bad_list.addItem(f"… and {bad - MAX_LISTED:,} more")
        # As tall as its lines, up to six (then it scrolls): the samples keep the room.
        rows = min(self.bad_list.count(), 6)
        self.bad_list.setFixedHeight(self.bad_list.sizeHintForRow(0) * rows + 2 * self.bad_list.frameWidth() + 4
                                     if rows else 0)
        self.bad_list.setVisible(bool(bad))
        if images:
            self.sample_preview.mark_bad({b.path: b.reason for b in check.bad})
            if self.preview is not None and check.good_counts:
                self.balance_chart.set_counts(check.good_counts)  # what training reads: the readable images
                self._show_summary()

    # -- messages ----------------------------------------------------------------------------------------------
    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def _show_summary(self) -> None:
        preview = self.preview
        if preview is None:
            self.summary_label.setText("")
            return
        check = self._current_check()
        label_counts = preview.label_counts
        if check is not None and check.good_counts:
            # An image folder once checked: count what training reads, the readable images.
            label_counts = check.good_counts
            parts = [f"{sum(label_counts.values()):,} readable images of {preview.total:,}"]
        else:
            parts = [f"{preview.total:,} samples"]
        if label_counts:
            counts = label_counts.values()
            parts.append(f"{len(label_counts)} classes (smallest {min(counts):,}, largest {max(counts):,})")
        if preview.note:
            parts.append(preview.note)
        self.summary_label.setText(" · ".join(parts))
        self._show_head_note()

    def _show_head_note(self) -> None:
        """Warn when the loaded model's head has fewer outputs than the data has classes."""
        loaded, preview = self.session.loaded, self.preview
        outputs = getattr(loaded, "num_classes", None)
        if preview is None or not preview.label_counts or outputs is None or self.error_label.text():
            return
        if len(preview.label_counts) > outputs:
            self._show_error(f"the data has {len(preview.label_counts)} classes but the model's head has {outputs} "
                             "outputs; set the model's number of classes (a new head) or fix the label set")




def _relative(path: str, root: Path) -> str:
    """``path`` below the data folder, as the user recognises it (the full path when outside)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


CONVERSATION_FORMATS = ("alpaca", "sharegpt", "messages")  # rows read by their own fields, not mapped columns
TRAINED_COLOUR = "#fde68a"  # the highlighter yellow readable on both themes' text colours


def rendered_html(rendered: Any) -> str:
    """A :class:`RenderedPreview` as HTML: a header line, then each example with its trained text highlighted."""
    template = rendered.template_name or "no template"
    parts = [f"<p><b>{html.escape(rendered.format)}</b> rows · template {html.escape(template)} · loss on "
             f"{html.escape(rendered.loss_on)} · {rendered.total:,} examples. "
             f"<span style='background:{TRAINED_COLOUR}; color:#111'>Highlighted</span>: what the loss trains on."
             + (f"<br><i>{html.escape(rendered.note)}</i>" if rendered.note else "") + "</p>"]
    for number, sample in enumerate(rendered.samples, start=1):
        pieces = []
        for start, end, trained in sample.spans:
            text = html.escape(sample.text[start:end])
            pieces.append(f"<span style='background:{TRAINED_COLOUR}; color:#111'>{text}</span>" if trained else text)
        parts.append(f"<p><b>Example {number}</b> · {sample.trained_tokens} of {sample.tokens} tokens trained"
                     f"<pre style='white-space: pre-wrap'>{''.join(pieces)}</pre></p>")
    return "".join(parts)


def _read(generation: int, data: DataConfig, tokenizer: Any = None) -> _PreviewResult:
    """Runs on the worker: the file's columns, the preview (or its error message) and the thumbnails;
    for a language model with its tokenizer, the first examples as training renders them."""
    columns = None
    try:
        if data.kind in ("text-classification", "causal-lm") and data.train and \
                Path(data.train).suffix.lower() in TABLE_SUFFIXES:
            columns = data_columns(data.train)
        preview = preview_data(data)
    except (DataError, OSError) as exc:  # OSError: the demo's data file, or a folder we may not read
        return _PreviewResult(generation, data, columns, None, str(exc), [])
    except Exception as exc:  # noqa: BLE001 - any failure must reach the user as a message, not a crash
        return _PreviewResult(generation, data, columns, None, f"{type(exc).__name__}: {exc}", [])
    rendered, rendered_error = None, ""
    if tokenizer is not None and data.kind == "causal-lm":
        try:
            rendered = preview_rendered(data, tokenizer)
        except (DataError, OSError, ValueError) as exc:
            rendered_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a template's own error, say: a message, not a crash
            rendered_error = f"{type(exc).__name__}: {exc}"
    return _PreviewResult(generation, data, columns, preview, None, thumbnail_images(preview.samples), rendered,
                          rendered_error)
