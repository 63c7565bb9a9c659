"""The History tab: every run with its config, curves, samples and confusion matrix, runs overlaid
(their samples side by side), and the run queue.

The history is a list of run folders (kept in ``QSettings``); everything shown is read
back from each folder (``run.toml``, ``metrics.jsonl``), so runs from the command line
can be added too, and a run's samples are there after a restart.  Ticking runs overlays
their curves and, in the Samples tab, lines up their latest samples by prompt or example
with the differences marked.  "Rank study…" queues the current config at several ranks (and, if
asked, full fine-tuning); the study's runs are then overlaid on one plot, each legend
entry with its trainable-parameter count — the rank study of the LoRA papers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHeaderView,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import EvalMetrics, RunConfig, Samples

from ..dialogs.rank_study_dialog import RankStudyDialog
from ..state.project_files import APPLICATION, ORGANIZATION
from ..state.run_controller import RunController
from ..state.run_history import RunRecord, read_run, study_configs, study_points, with_samples
from ..state.run_queue import RunQueue
from ..state.run_summary import run_continuation
from ..state.session import StudioSession
from ..widgets.confusion_heatmap import ConfusionHeatmap
from ..widgets.flow_layout import flow_bar
from ..widgets.samples_view import SamplesCompareView, SamplesView

SETTINGS_KEY = "history/run_folders"
COLUMNS = ("Run", "Setup", "Trainable", "Steps", "Val loss", "Val acc / ppl", "Status")
METRICS = ("Validation loss", "Training loss", "Validation accuracy (%) / perplexity",
           "Rank study: final result vs rank")
RANK_CHART = 3  # the index in METRICS of the rank-study summary (one point per run, not curves)
LEGEND_ROWS = 4  # the legend list shows this many runs before it scrolls
SAMPLES_MODES = ("The selected run's samples", "Ticked runs side by side")
SAMPLES_SELECTED, SAMPLES_COMPARED = 0, 1
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")  # Tableau 10 (matplotlib's default cycle)


class HistoryPanel(QWidget):
    """Runs table (tick to compare), comparison plot, the selected run's config, the queue."""

    sig_runs_changed = Signal()
    """The list of runs or one of them changed (a run started, evaluated, ended, was added or removed)."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None,
                 settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self.session = session
        # The studio's one settings file (StudioSettings' INI file), not Qt's default native one: a
        # test or a renderer that redirects the studio's settings redirects the history with them.
        self.settings = settings if settings is not None else QSettings(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)
        self.controller = RunController.for_session(session)
        self.queue = RunQueue(self.controller, parent=self)
        self.study_dialog: RankStudyDialog | None = None
        self._records: dict[Path, RunRecord] = {}
        self._items: dict[Path, QTreeWidgetItem] = {}
        self._to_compare: set[Path] = set()  # runs of a queued study: ticked as they start
        self._current_listed = True  # whether the running run's row exists yet
        self._comparable = 0  # ticked runs with samples, at the last redraw
        self._build()
        self.controller.sig_run_started.connect(self._on_run_started)
        self.controller.sig_event.connect(self._on_run_event)
        self.controller.sig_run_finished.connect(self._on_run_finished)
        self.queue.sig_changed.connect(self._on_queue_changed)
        self.queue.sig_batch_finished.connect(self._on_batch_finished)
        for folder in self.settings.value(SETTINGS_KEY, [], type=list) or []:
            self.add_run_folder(folder, remember=False)

    # -- public API --------------------------------------------------------------------------------
    def runs(self) -> list[RunRecord]:
        """Every run in the history, in the table's order."""
        return [self._records[path] for path in self._items]

    def add_run_folder(self, folder: str | Path, *, remember: bool = True) -> RunRecord | None:
        """Add (or re-read) a run folder; None when it is not one."""
        path = Path(folder).resolve()
        try:
            record = read_run(path)
        except (OSError, ValueError):
            return None
        self._records[path] = record
        if path not in self._items:
            item = QTreeWidgetItem(self.table)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(0, Qt.CheckState.Unchecked)
            item.setData(0, Qt.ItemDataRole.UserRole, str(path))
            self._items[path] = item
            if remember:
                self._save_list()
        self._fill_row(self._items[path], record)
        if self.table.currentItem() is None:
            self.table.setCurrentItem(self._items[path])  # show a config rather than an empty pane
        elif self.table.currentItem() is self._items[path]:
            self._show_details(record)  # the selected run evaluated again: its newest samples
        self._redraw()
        self.sig_runs_changed.emit()
        return record

    def remove_selected(self) -> None:
        """Take the selected runs off the list (their folders stay on disk)."""
        for item in self.table.selectedItems():
            path = Path(item.data(0, Qt.ItemDataRole.UserRole))
            self._items.pop(path, None)
            self._records.pop(path, None)
            self.table.takeTopLevelItem(self.table.indexOfTopLevelItem(item))
        self._save_list()
        self._redraw()
        self.sig_runs_changed.emit()

    def set_compared(self, folders: list[str | Path]) -> None:
        """Tick exactly these runs for the comparison plot."""
        wanted = {Path(f).resolve() for f in folders}
        self.table.blockSignals(True)  # one redraw, not one per box
        for path, item in self._items.items():
            item.setCheckState(0, Qt.CheckState.Checked if path in wanted else Qt.CheckState.Unchecked)
        self.table.blockSignals(False)
        self._redraw()

    def compared(self) -> list[RunRecord]:
        """The ticked runs, in the table's order."""
        return [self._records[p] for p, item in self._items.items() if item.checkState(0) == Qt.CheckState.Checked]

    def comparison_legend(self) -> list[str]:
        """The comparison plot's legend entries, one per drawn run."""
        return [self.legend_list.item(i).text() for i in range(self.legend_list.count())]

    def plot_title_text(self) -> str:
        """The comparison plot's title."""
        return self.plot_title.text()

    def open_rank_study(self, include_full: bool = False) -> RankStudyDialog:
        """Open the "Rank study…" dialog (non-blocking); accepting it queues the runs."""
        config = self.session.training_copy()
        ranks = str(config.lora.r) if include_full else None
        dialog = RankStudyDialog(config.training.lr, include_full=include_full, parent=self,
                                 **({"ranks": ranks} if ranks else {}))
        dialog.accepted.connect(lambda: self.queue_study(dialog.ranks(), dialog.full_lr_value(),
                                                         head=dialog.head_check.isChecked()))
        self.study_dialog = dialog
        dialog.open()
        return dialog

    def queue_study(self, ranks: list[int], full_lr: float | None = None,
                    base: RunConfig | None = None, *, head: bool = False) -> list[RunConfig]:
        """Queue ``base`` (default: the session's config) at each rank, plus full fine-tuning at
        ``full_lr`` when given and a head-only run with ``head``; their runs are ticked for
        comparison as they start."""
        configs = study_configs(base or self.session.training_copy(), ranks, full_lr=full_lr, head=head)
        self._to_compare = {Path(c.output.dir).resolve() for c in configs}
        self.set_compared([])
        self.queue.add(configs)
        return configs

    def focus_run(self, folder: str | Path) -> None:
        """Select the run in ``folder`` (added when missing) and tick it beside the runs already ticked:
        the Train tab's Compare."""
        path = Path(folder).resolve()
        if path not in self._items and self.add_run_folder(path) is None:
            return
        item = self._items[path]
        self.table.setCurrentItem(item)
        self.table.scrollToItem(item)
        item.setCheckState(0, Qt.CheckState.Checked)  # itemChanged redraws the comparison

    def continue_run(self, folder: str | Path, extra_steps: int = 0) -> None:
        """Resume the run in ``folder`` from its checkpoint (``extra_steps`` > 0: extend it) on the
        session's run controller; the Train tab shows it.  A refusal is shown beside the queue."""
        try:
            self.controller.continue_run(folder, extra_steps)
        except (RuntimeError, OSError, ValueError) as exc:
            self.queue_label.setText(f"Could not continue {Path(folder).name}: {exc}")

    def run_menu(self, folder: str | Path) -> QMenu:
        """The context menu of the run in ``folder``: Resume from its checkpoint (it ended early) or
        Extend by N steps… (it finished), while nothing else trains."""
        menu = QMenu(self)
        choice = run_continuation(folder)
        if choice == "extend":
            action = menu.addAction("Extend by N steps…", lambda: self._ask_extend(folder))
        else:
            action = menu.addAction("Resume from checkpoint", lambda: self.continue_run(folder))
            action.setEnabled(choice == "resume")
        if self.controller.is_running():
            action.setEnabled(False)
            action.setText(action.text() + " (wait: a run is going)")
        return menu

    def _show_run_menu(self, pos) -> None:
        item = self.table.itemAt(pos)
        if item is not None:
            self.run_menu(item.data(0, Qt.ItemDataRole.UserRole)).popup(self.table.viewport().mapToGlobal(pos))

    def _ask_extend(self, folder: str | Path) -> None:
        steps, ok = QInputDialog.getInt(self, "Extend the run", f"Train {Path(folder).name} this many more steps:",
                                        20, 1, 10_000_000)
        if ok:
            self.continue_run(folder, steps)

    # -- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.study_button = QPushButton("Rank study…")
        self.study_button.setToolTip("Queue the current config at ranks 4, 8, 16, 32 and compare them")
        self.study_button.clicked.connect(lambda: self.open_rank_study())
        self.versus_button = QPushButton("LoRA vs full…")
        self.versus_button.setToolTip("Queue the current config and a full fine-tuning run of it")
        self.versus_button.clicked.connect(lambda: self.open_rank_study(include_full=True))
        self.add_button = QPushButton("Add run folder…")
        self.add_button.clicked.connect(self._ask_folder)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.queue_label = QLabel("Queue: empty")
        self.clear_queue_button = QPushButton("Clear queue")
        self.clear_queue_button.setEnabled(False)
        self.clear_queue_button.clicked.connect(self.queue.clear)
        # A bar that wraps: six controls side by side made the window 645 px wider than its other tabs.
        bar = flow_bar(self.study_button, self.versus_button, self.add_button, self.remove_button,
                       self.queue_label, self.clear_queue_button)

        self.table = QTreeWidget()
        self.table.setHeaderLabels(list(COLUMNS))
        self.table.setRootIsDecorated(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # "demo-study/r8": both ends tell
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(36)
        # The run's name takes what is left; every other column is as wide as its values, so
        # accuracy and status show without scrolling sideways (their full text is in the tooltip).
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)
        self.table.itemChanged.connect(lambda item, column: self._redraw() if column == 0 else None)
        self.table.currentItemChanged.connect(self._show_config)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)  # Resume / Extend a run
        self.table.customContextMenuRequested.connect(self._show_run_menu)
        self.metric_box = QComboBox()
        self.metric_box.addItems(METRICS)
        self.metric_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.metric_box.setMinimumContentsLength(16)
        self.metric_box.currentIndexChanged.connect(self._redraw)
        self.plot_title = QLabel("Tick runs to compare them")  # a label wraps where a plot title is clipped
        self.plot_title.setWordWrap(True)
        self.plot_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumSize(160, 120)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setDownsampling(auto=True, mode="peak")
        self.plot.setClipToView(True)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setLabel("bottom", "step")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        # The legend is a list beside the plot, not an item on it: it never covers a curve, and each
        # entry has its curve's colour as a swatch.
        self.legend_list = QListWidget()
        self.legend_list.setObjectName("history_legend")
        self.legend_list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.legend_list.setSelectionMode(QListWidget.SelectionMode.NoSelection)
        self.legend_list.hide()
        self.config_view = QPlainTextEdit()
        self.config_view.setReadOnly(True)
        self.config_view.setPlaceholderText("The selected run's config (run.toml)")
        self.samples_view = SamplesView(empty_text="The selected run logged no samples ([samples] in its config).")
        self.compare_samples_view = SamplesCompareView()
        self.samples_mode = QComboBox()
        self.samples_mode.setObjectName("history_samples_mode")
        self.samples_mode.addItems(SAMPLES_MODES)
        self.samples_mode.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.samples_mode.setMinimumContentsLength(12)
        self.samples_stack = QStackedWidget()
        self.samples_stack.addWidget(self.samples_view)
        self.samples_stack.addWidget(self.compare_samples_view)
        self.samples_mode.currentIndexChanged.connect(self.samples_stack.setCurrentIndex)
        samples_page = QWidget()
        samples_layout = QVBoxLayout(samples_page)
        samples_layout.setContentsMargins(2, 2, 2, 2)
        samples_layout.addWidget(self.samples_mode)
        samples_layout.addWidget(self.samples_stack, 1)
        self.confusion_view = ConfusionHeatmap()
        self.detail_tabs = QTabWidget()
        self.detail_tabs.setObjectName("history_detail_tabs")
        self.detail_tabs.setDocumentMode(True)
        self.config_tab = self.detail_tabs.addTab(self.config_view, "Config")
        self.samples_tab = self.detail_tabs.addTab(samples_page, "Samples")
        self.confusion_tab = self.detail_tabs.addTab(self.confusion_view, "Confusion matrix")

        chart = QWidget()
        chart_layout = QVBoxLayout(chart)
        chart_layout.setContentsMargins(0, 0, 0, 0)
        chart_layout.addWidget(self.metric_box)
        chart_layout.addWidget(self.plot_title)
        chart_layout.addWidget(self.plot_widget, 1)
        chart_layout.addWidget(self.legend_list)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(chart)
        lower.addWidget(self.detail_tabs)
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        lower.setSizes([600, 400])
        # The table spans the tab's width (its seven columns fit), the chart and the config share the rest.
        body = QSplitter(Qt.Orientation.Vertical)
        body.addWidget(self.table)
        body.addWidget(lower)
        body.setStretchFactor(0, 2)
        body.setStretchFactor(1, 3)
        body.setSizes([200, 400])
        layout = QVBoxLayout(self)
        layout.addWidget(bar)
        layout.addWidget(body, 1)

    # -- slots and helpers -------------------------------------------------------------------------
    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a run folder")
        if folder and self.add_run_folder(folder) is None:
            self.queue_label.setText(f"{folder} is not a run folder (no run.toml)")

    def _on_run_started(self, config: RunConfig) -> None:
        # run.toml is written by the worker a moment later: the run's first event adds the row.
        self._current_listed = False

    def _on_run_event(self, event: object) -> None:
        config = self.controller.config
        if config is None:
            return
        path = Path(config.output.dir).resolve()
        if isinstance(event, Samples) and self._current_listed and path in self._records:
            self._add_samples(path, event)  # right after its evaluation's re-read: no second read of the log
        elif isinstance(event, EvalMetrics) or not self._current_listed:
            self._current_listed = True
            self._reread(path)

    def _add_samples(self, path: Path, samples: Samples) -> None:
        self._records[path] = record = with_samples(self._records[path], samples)
        if self.table.currentItem() is self._items.get(path):
            self._show_details(record)
        if self._items[path].checkState(0) == Qt.CheckState.Checked:
            self._update_samples_comparison(self.compared())

    def _on_run_finished(self, result: object) -> None:
        self._reread(Path(result.run_dir))

    def _reread(self, folder: Path) -> None:
        path = folder.resolve()
        if self.add_run_folder(path) is not None and path in self._to_compare:
            self._items[path].setCheckState(0, Qt.CheckState.Checked)

    def _on_batch_finished(self, folders: list) -> None:
        # A study's point is its summary: once its runs are done, show final result against rank.
        study = {Path(f).resolve() for f in folders} & self._to_compare
        ranked = [p for p in study_points([self._records[f] for f in study if f in self._records]) if p.rank]
        if len(ranked) >= 2:
            self.metric_box.setCurrentIndex(RANK_CHART)

    def _on_queue_changed(self, waiting: int) -> None:
        self.queue_label.setText(f"Queue: {waiting} waiting" if waiting else "Queue: empty")
        self.clear_queue_button.setEnabled(waiting > 0)

    def _fill_row(self, item: QTreeWidgetItem, record: RunRecord) -> None:
        last_metric = ""
        if record.eval_accuracy and record.eval_accuracy[-1] is not None:
            last_metric = f"{record.eval_accuracy[-1]:.1%}"
        elif record.eval_perplexity and record.eval_perplexity[-1] is not None:
            last_metric = f"{record.eval_perplexity[-1]:.2f}"
        values = (record.name, record.setup, f"{record.trainable:,}" if record.trainable is not None else "",
                  str(record.steps), f"{record.eval_loss[-1]:.4f}" if record.eval_loss else "", last_metric,
                  record.status)
        self.table.blockSignals(True)
        for column, text in enumerate(values):
            item.setText(column, text)
            item.setToolTip(column, f"{COLUMNS[column]}: {text}")
            if column > 0:
                item.setTextAlignment(column, Qt.AlignmentFlag.AlignRight if column in (2, 3, 4, 5)
                                      else Qt.AlignmentFlag.AlignLeft)
        item.setToolTip(0, str(record.run_dir))
        self.table.blockSignals(False)

    def _show_config(self, item: QTreeWidgetItem | None) -> None:
        record = self._records.get(Path(item.data(0, Qt.ItemDataRole.UserRole))) if item else None
        self.config_view.setPlainText(record.config.to_toml() if record else "")
        self._show_details(record)

    def _show_details(self, record: RunRecord | None) -> None:
        """The selected run's samples (every evaluation's, the latest shown) and its last confusion matrix."""
        if record is None:
            self.samples_view.clear()
            self.confusion_view.clear()
            return
        self.samples_view.set_history(record.samples)
        last = record.last_confusion
        if last is not None:
            self.confusion_view.show_matrix(last.matrix, last.class_names, last.step)
        else:
            self.confusion_view.clear("The selected run logged no confusion matrix (a classifier's evaluations do).")
        self.detail_tabs.setTabVisible(self.confusion_tab, record.config.data.kind != "causal-lm")

    def _update_samples_comparison(self, runs: list[RunRecord]) -> None:
        """The ticked runs' latest samples side by side; the Samples tab turns to them when a second run
        with samples is ticked, and back to the selected run's when fewer than two are left."""
        self.compare_samples_view.show_runs([r.name for r in runs], [r.last_samples for r in runs])
        comparable = sum(1 for r in runs if r.last_samples is not None and r.last_samples.items)
        if comparable >= 2 > self._comparable:
            self.samples_mode.setCurrentIndex(SAMPLES_COMPARED)
        elif comparable < 2 <= self._comparable:
            self.samples_mode.setCurrentIndex(SAMPLES_SELECTED)
        self._comparable = comparable

    def _redraw(self) -> None:
        """Curves are rebuilt here (not streamed): this runs when ticks, metric or a run change."""
        self.plot.clear()
        self.legend_list.clear()
        runs = self.compared()
        self._update_samples_comparison(runs)
        metric = self.metric_box.currentIndex()
        colours = [run_colour(index) for index in range(len(runs))]
        if metric == RANK_CHART:
            self._draw_rank_study(runs, colours)
        else:
            self._draw_curves(runs, metric, colours)
        for record, colour in zip(runs, colours, strict=True):
            entry = QListWidgetItem(_swatch(colour), record.legend)
            entry.setToolTip(f"{record.legend}\n{record.run_dir}")
            self.legend_list.addItem(entry)
        if runs:  # as tall as its entries, up to LEGEND_ROWS, then it scrolls
            row = max(self.legend_list.sizeHintForRow(0), self.legend_list.fontMetrics().height() + 2)
            frame = 2 * self.legend_list.frameWidth() + 4
            self.legend_list.setFixedHeight(min(len(runs), LEGEND_ROWS) * row + frame)
        self.legend_list.setVisible(bool(runs))

    def _draw_curves(self, runs: list[RunRecord], metric: int, colours: list[QColor]) -> None:
        self.plot_title.setText(f"{METRICS[metric]} of {plural(len(runs), 'run')}" if runs
                                else "Tick runs to compare them")
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "")
        self.plot.getAxis("bottom").setTicks(None)
        xs_all: list[float] = []
        ys_all: list[float] = []
        for record, colour in zip(runs, colours, strict=True):
            xs, ys = _series(record, metric)
            pen = pg.mkPen(colour, width=2)
            symbol = "o" if metric != 1 or len(xs) < 3 else None  # evaluations are few: show each point
            self.plot.plot(xs, ys, pen=pen, symbol=symbol, symbolSize=6, symbolBrush=colour, name=record.legend)
            xs_all += xs
            ys_all += ys
        self._frame(xs_all, ys_all, x_floor=0.0)

    def _draw_rank_study(self, runs: list[RunRecord], colours: list[QColor]) -> None:
        """Final metric against rank (log2 axis), each point labelled with its trainable parameters;
        the baselines (full fine-tuning, head only) are dashed lines across (they have no rank)."""
        colour_of = {record.name: colour for record, colour in zip(runs, colours, strict=True)}
        points = study_points(runs)
        lora = [p for p in points if p.rank is not None]
        full = [p for p in points if p.rank is None]
        if not points:
            self.plot_title.setText("Tick the runs of a rank study (evaluated runs) to compare their final results")
            return
        metric = points[0].metric
        self.plot_title.setText(f"Final {metric} against rank, {plural(len(points), 'run')}")
        self.plot.setLabel("bottom", "rank (log scale)")
        self.plot.setLabel("left", metric)
        xs = [math.log2(p.rank) for p in lora]
        ys = [p.value for p in lora]
        if lora:
            self.plot.plot(xs, ys, pen=pg.mkPen((150, 150, 150), width=1))
            brushes = [colour_of.get(p.name, QColor(70, 130, 200)) for p in lora]
            self.plot.plot(xs, ys, pen=None, symbol="o", symbolSize=9, symbolBrush=brushes)
            self.plot.getAxis("bottom").setTicks([[(x, str(p.rank)) for x, p in zip(xs, lora, strict=True)]])
            for i, (x, p) in enumerate(zip(xs, lora, strict=True)):
                # The end points' labels lean inwards, so none runs off the plot.
                side = 0.5 if len(lora) == 1 else (0.0 if i == 0 else 1.0 if i == len(lora) - 1 else 0.5)
                label = pg.TextItem(_trainable_label(p.trainable), anchor=(side, 1.3), color=(120, 120, 120))
                label.setPos(x, p.value)
                self.plot.addItem(label)
        for p in full:
            line = pg.InfiniteLine(pos=p.value, angle=0, pen=pg.mkPen(colour_of.get(p.name, (200, 80, 80)), width=2,
                                                                   style=Qt.PenStyle.DashLine),
                                   label=f"{'full fine-tuning' if p.setup == 'full' else p.setup or 'baseline'} "
                                         f"({_trainable_label(p.trainable)})",
                                   labelOpts={"position": 0.02, "anchors": [(0, 1), (0, 1)],
                                              "color": (120, 120, 120)})
            self.plot.addItem(line)
        # Room around the points for their labels: half a rank step each side, a label's height on top.
        y_range = padded_range(ys + [p.value for p in full], pad=0.12)
        if y_range is not None:
            low, high = y_range
            self.plot.setRange(xRange=(min(xs or [0.0]) - 0.4, max(xs or [0.0]) + 0.4),
                               yRange=(low, high + 0.12 * (high - low)), padding=0)

    def _frame(self, xs: list[float], ys: list[float], x_floor: float | None = None) -> None:
        """Frame the points explicitly: pyqtgraph's auto range gives -150..150 around a single point."""
        x_range, y_range = padded_range(xs, floor=x_floor), padded_range(ys)
        if x_range is not None and y_range is not None:
            self.plot.setRange(xRange=x_range, yRange=y_range, padding=0)

    def _save_list(self) -> None:
        self.settings.setValue(SETTINGS_KEY, [str(path) for path in self._items])


def padded_range(values: list[float], *, floor: float | None = None, pad: float = 0.06) -> tuple[float, float] | None:
    """(low, high) that shows every value with a margin; a single value (or equal ones) gets a span
    of 10% of its size (at least 1 for values near zero), never pyqtgraph's -150..150.  ``floor``:
    the low end never goes below it (steps start at 0).  None for no values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    if high - low < 1e-12 * max(1.0, abs(high)):
        size = abs(high)
        half = max(size * 0.05, 0.5) if size >= 1 else (size * 0.05 if size > 0 else 0.5)
        low, high = low - half, high + half
    margin = (high - low) * pad
    low, high = low - margin, high + margin
    if floor is not None and low < floor <= min(finite):
        low = floor
    return low, high


def run_colour(index: int) -> QColor:
    """The colour of the ``index``-th compared run: Tableau's ten, readable on light and dark plots
    (pyqtgraph's evenly spread hues put pale yellow second)."""
    return QColor(RUN_COLOURS[index % len(RUN_COLOURS)])


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _trainable_label(trainable: int | None) -> str:
    return f"{trainable:,} trainable" if trainable is not None else "trainable: ?"


def _swatch(colour: QColor, size: int = 12) -> QIcon:
    """A filled square of ``colour``: the legend entry's sample of its curve."""
    pixmap = QPixmap(size, size)
    pixmap.fill(colour)
    return QIcon(pixmap)


def _series(record: RunRecord, metric: int) -> tuple[list[float], list[float]]:
    """(steps, values) of one of :data:`METRICS` for a run."""
    if metric == 0:
        return list(record.eval_steps), list(record.eval_loss)
    if metric == 1:
        return list(record.train_steps), list(record.train_loss)
    pairs = [(s, 100.0 * a if a is not None else p) for s, a, p in
             zip(record.eval_steps, record.eval_accuracy, record.eval_perplexity, strict=True)]
    pairs = [(s, v) for s, v in pairs if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]
