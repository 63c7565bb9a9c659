"""The Train tab: Start, Pause/Resume, Stop, live curves, run statistics, per-layer updates, the run's
samples at each evaluation, a classifier's confusion matrix, and a log.

The panel is a view of the session's run controller
(:class:`~lora_studio.app.state.run_controller.RunController`): it shows whatever run the
controller trains (one started here, or one from the history's queue).  Public API for the
rest of the window:

* :meth:`RunPanel.start_run` — train a config (default: a copy of the session's) in a fresh folder;
* :meth:`RunPanel.is_running` / :meth:`RunPanel.stop_and_wait` — closing the window during a run;
* :meth:`RunPanel.trained_model` — the model of the last run (adapter attached) for the export dialog;
* :meth:`RunPanel.continue_run` — resume a run folder from its checkpoint, or extend it by N steps;
* ``sig_run_started`` / ``sig_run_finished`` / ``sig_error`` — for benchmarks and tests;
* ``sig_export_requested`` / ``sig_compare_requested`` — the summary card's Export and Compare,
  which the main window answers (export dialog; History tab with the run selected).

Beside the layer updates, tabs show the run's fixed samples (:class:`~lora_studio.app.widgets.samples_view.
SamplesView`: each prompt's generation, or each example's predicted label, at the latest evaluation or an
earlier one), the latest confusion matrix (classifiers only) and the log.

When a run ends the panel shows a :class:`~lora_studio.app.widgets.run_summary_card.RunSummaryCard`
(before → after, best step, time, adapter size, the folder, Resume or Extend) and, when the window
is not the active one, a desktop notification where the platform has a system tray.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QSystemTrayIcon,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import (
    CheckpointSaved,
    EvalMetrics,
    Failed,
    Finished,
    LoadedModel,
    RunConfig,
    Samples,
    StepMetrics,
    TrainingWarning,
    TrainResult,
)

from ..state.run_controller import IDLE, PAUSED, PAUSING, STOPPING, RunController, pause_note
from ..state.run_history import earlier_samples, next_free_run_dir
from ..state.run_summary import RunSummary
from ..state.session import StudioSession
from ..widgets.confusion_heatmap import ConfusionHeatmap
from ..widgets.live_plots import LivePlots
from ..widgets.run_summary_card import RunSummaryCard, format_bytes, format_duration
from ..widgets.samples_view import SamplesView, is_classifier_samples, right_wrong
from ..widgets.update_norms_plot import UpdateNormsView

LOG_LINES = 2_000  # the log pane keeps the newest lines only: a long run must not grow it forever


class RunPanel(QWidget):
    """Start/Pause/Stop, live plots, statistics, log pane and per-layer update view."""

    sig_run_started = Signal(object)
    """A run started (payload: its RunConfig; output.dir is its run folder)."""
    sig_run_finished = Signal(object)
    """A run ended, however it ended (payload: its TrainResult)."""
    sig_error = Signal(str, str)
    """A run failed: (message, details); the panel also shows it in a dialog unless ``show_dialogs`` is off."""
    sig_export_requested = Signal()
    """The summary card's Export… was pressed (the main window opens its export dialog)."""
    sig_compare_requested = Signal(str)
    """The summary card's Compare was pressed (payload: the run folder to show in History)."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.controller = RunController.for_session(session)
        self.show_dialogs = True  # benchmarks and scripted runs turn the error dialog off
        self.error_dialog: QMessageBox | None = None  # the dialog of the last failure, while open
        self._valid, self._invalid_reason = True, ""
        self._last_step: StepMetrics | None = None  # the stats line is redrawn from it on pause/resume
        self.last_notice: tuple[str, str] | None = None  # the last run-end notification (title, text)
        self._tray: QSystemTrayIcon | None = None
        self._build()
        self.controller.sig_run_started.connect(self._on_started)
        self.controller.sig_event.connect(self._on_event)
        self.controller.sig_state_changed.connect(self._on_state)
        self.controller.sig_run_finished.connect(self._on_finished)
        self.controller.sig_error.connect(self._on_error)
        self.controller.sig_earlier_events.connect(self._on_earlier_events)
        config_changed = getattr(session, "sig_config_changed", None)
        if config_changed is not None:  # a demo or model of another kind loaded: before its first run
            config_changed.connect(self._on_config_changed)
        validity = getattr(session, "sig_validity_changed", None)
        if validity is not None:  # a stand-in session without validation: every config counts as valid
            validity.connect(self._on_validity)
        reason = getattr(session, "config_error", "") or ""  # e.g. "No model loaded": the tooltip says why
        self._on_validity(bool(getattr(session, "is_valid", lambda: True)()), reason)
        self._on_config_changed(getattr(session, "config", None))
        self._on_state(self.controller.state)

    # -- public API --------------------------------------------------------------------------------
    def start_run(self, config: RunConfig | None = None) -> Path:
        """Train ``config`` (default: a copy of the session's config, in a fresh run folder so no
        earlier run is overwritten); returns the run folder.  Raises RuntimeError during a run."""
        if config is None:
            config = self.session.training_copy()
            folder = next_free_run_dir(config.output.dir)
            config = config.replace(output=dataclasses.replace(config.output, dir=str(folder)))
        self.controller.start(config)
        return Path(config.output.dir)

    def continue_run(self, run_dir: str | Path, extra_steps: int = 0) -> RunConfig:
        """Resume the run in ``run_dir`` from its newest checkpoint (``extra_steps`` past its end: extend
        a finished run), as ``lora-studio resume RUN_DIR --extra-steps N`` does; the curves continue
        from the points the run logged.  Returns the config it trains; raises RuntimeError during a
        run, OSError/ValueError for a folder that holds no run."""
        return self.controller.continue_run(run_dir, extra_steps)

    def is_running(self) -> bool:
        """True while a run is going (paused and stopping included)."""
        return self.controller.is_running()

    def toggle_pause(self) -> None:
        """Pause a running run, or resume a paused one."""
        if self.controller.state == PAUSED:
            self.controller.resume()
        else:
            self.controller.pause()

    def stop(self) -> None:
        """Stop the run after the step in progress (it saves a checkpoint and its adapter)."""
        self.controller.stop()

    def stop_and_wait(self, timeout_ms: int = 30_000) -> bool:
        """Stop the run and wait for it to end (events keep flowing); True when nothing runs any more.
        The main window calls it from its close event after asking the user."""
        return self.controller.stop_and_wait(timeout_ms)

    def trained_model(self) -> LoadedModel | None:
        """The model of the last run that trained one: built as the run built it, adapter attached,
        final weights loaded (full fine-tuning: the whole model).  None before any run."""
        return self.controller.trained_model()

    def last_result(self) -> TrainResult | None:
        """The result of the last run that ended."""
        return self.controller.last_result()

    def last_summary(self) -> RunSummary | None:
        """The summary the card shows of the last run that ended (None before any)."""
        return self.summary_card.summary

    def log_text(self) -> str:
        """Everything the log pane shows."""
        return self.log.toPlainText()

    # -- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.start_button = QPushButton("Start")
        self.start_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.start_button.clicked.connect(lambda: self.start_run())
        self.pause_button = QPushButton("Pause")
        self.pause_button.setShortcut(QKeySequence("Ctrl+P"))
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setShortcut(QKeySequence("Ctrl+."))
        self.stop_button.clicked.connect(self.stop)
        self.state_label = QLabel("Ready")
        self.progress = QProgressBar()
        self.progress.setFormat("step %v / %m")
        self.stats_label = QLabel("")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label.setWordWrap(True)  # a failure's message can be long: wrap it, never widen the window
        self.summary_card = RunSummaryCard()
        self.summary_card.sig_open_folder.connect(self._open_folder)
        self.summary_card.sig_export.connect(self.sig_export_requested.emit)
        self.summary_card.sig_compare.connect(self.sig_compare_requested.emit)
        self.summary_card.sig_resume.connect(lambda folder: self._continue_from_card(folder, 0))
        self.summary_card.sig_extend.connect(self._continue_from_card)
        buttons = QHBoxLayout()
        for widget in (self.start_button, self.pause_button, self.stop_button, self.state_label):
            buttons.addWidget(widget)
        buttons.addWidget(self.progress, 1)

        self.plots = LivePlots()
        self.norms_view = UpdateNormsView()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setPlaceholderText("Warnings, evaluations and checkpoints of the run appear here.")
        self.samples_view = SamplesView()
        self.confusion_view = ConfusionHeatmap()
        # Tabs, not three panes side by side: the window must fit 1280x720 with the model column and
        # the settings dock open, and each of these needs the pane's whole width to be readable.
        self.side_tabs = QTabWidget()
        self.side_tabs.setObjectName("run_side_tabs")
        self.side_tabs.setDocumentMode(True)
        self.samples_tab = self.side_tabs.addTab(self.samples_view, "Samples")
        self.confusion_tab = self.side_tabs.addTab(self.confusion_view, "Confusion matrix")
        self.log_tab = self.side_tabs.addTab(self.log, "Log")
        self.side_tabs.setTabToolTip(self.samples_tab, "What the model does with the run's fixed samples "
                                                       "at each evaluation ([samples] in the config)")
        self.side_tabs.setTabToolTip(self.confusion_tab, "Which classes the model confuses, at the latest evaluation")
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.norms_view)
        bottom.addWidget(self.side_tabs)
        bottom.setSizes([1, 1])
        body = QSplitter(Qt.Orientation.Vertical)
        body.addWidget(self.plots)
        body.addWidget(bottom)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.stats_label)
        layout.addWidget(self.summary_card)
        layout.addWidget(body, 1)

    # -- slots -------------------------------------------------------------------------------------
    def _on_validity(self, valid: bool, reason: str) -> None:
        self._valid, self._invalid_reason = valid, reason
        self._update_buttons()

    def _on_state(self, state: str) -> None:
        self.pause_button.setText("Resume" if state == PAUSED else "Pause")
        text = {IDLE: "Ready", PAUSED: "Paused", STOPPING: "Stopping…",
                PAUSING: "Pausing: saving a checkpoint…"}.get(state, "Training…")
        if state == PAUSED and self.controller.launched:  # nothing runs: the processes ended after saving
            text = "Paused (checkpoint saved, processes stopped)"
        self.state_label.setText(text)
        if self._last_step is not None and state in (PAUSED, "running"):
            self.stats_label.setText(step_stats(self._last_step, paused=state == PAUSED))  # no ETA while paused
        elif state == PAUSED:
            self.stats_label.setText("Paused before the first step")
        elif state == "running" and self.stats_label.text() == "Paused before the first step":
            self.stats_label.setText("Training the first steps…")
        self._update_buttons()

    def _update_buttons(self) -> None:
        state = self.controller.state
        self.start_button.setEnabled(self._valid and state == IDLE)
        self.start_button.setToolTip(self._invalid_reason if not self._valid
                                     else "Train the current config (Ctrl+Enter)")
        self.pause_button.setEnabled(state in (PAUSED, "running"))
        self.stop_button.setEnabled(state not in (IDLE, STOPPING))
        config = self.controller.config
        if self.controller.launched and config is not None and state != IDLE:
            self.pause_button.setToolTip(f"{pause_note(config.training.processes)} (Ctrl+P)")
        else:
            self.pause_button.setToolTip("Hold the run between steps; Resume goes on (Ctrl+P)")

    def _on_started(self, config: RunConfig) -> None:
        self.summary_card.hide()
        self._last_step = None
        self.plots.clear()
        self.plots.start()
        baseline = {"full": "Full fine-tuning: no adapters", "head": "Head only: no adapters"}
        self.norms_view.clear(baseline.get(config.training.mode, ""))
        self.samples_view.clear(samples_note(config))
        self.confusion_view.clear()
        self._show_confusion_tab(config.data)
        self.progress.setRange(0, config.training.max_steps)
        self.progress.setValue(0)
        setup = {"full": "full fine-tuning", "head": "the head only"}.get(
            config.training.mode, f"{config.lora.variant} r={config.lora.r} alpha={config.lora.alpha:g}")
        if self.controller.continuing:
            self.stats_label.setText("Loading the checkpoint, the model and data…")
            self._log(f"▶ run continued in {config.output.dir} ({setup}, to step {config.training.max_steps})")
        else:
            self.stats_label.setText("Preparing the model and data…")
            self._log(f"▶ run started in {config.output.dir} ({setup}, {config.training.max_steps} steps)")
        self.sig_run_started.emit(config)

    def _on_earlier_events(self, events: list, from_step: int) -> None:
        """A continued run's curves so far: drawn first, so the new points extend them."""
        last_eval = None
        for event in events:
            self.plots.add_event(event)
            if isinstance(event, EvalMetrics):
                last_eval = event
        if last_eval is not None and last_eval.layer_update_norms:
            self.norms_view.add_event(last_eval)
        if last_eval is not None:
            self.confusion_view.add_event(last_eval)
        config = self.controller.config
        if config is not None:
            for samples in earlier_samples(config.output.dir, from_step):
                self.samples_view.add_event(samples)
        self.plots.refresh()
        self.progress.setValue(from_step)
        self._log(f"continuing from the checkpoint at step {from_step} ({len(events)} earlier points drawn)")

    def _on_event(self, event: object) -> None:
        self.plots.add_event(event)
        if isinstance(event, StepMetrics):
            self._last_step = event
            self.progress.setValue(event.step)
            self.stats_label.setText(step_stats(event, paused=self.controller.state == PAUSED))
        elif isinstance(event, EvalMetrics):
            self.norms_view.add_event(event)
            self.confusion_view.add_event(event)
            self._log(_eval_line(event))
            if self._last_step is None and event.step == 0 and self.controller.state != PAUSED:
                self.stats_label.setText(f"Base model: {_eval_numbers(event)}; training the first steps…")
        elif isinstance(event, Samples):
            self.samples_view.add_event(event)
            if event.items and is_classifier_samples(event):
                right, wrong = right_wrong(event)
                self._log(f"samples at step {event.step}: {right} of {right + wrong} right")
        elif isinstance(event, TrainingWarning):
            self._log(f"⚠ warning{f' (step {event.step})' if event.step else ''}: {event.message}")
        elif isinstance(event, CheckpointSaved):
            what = "the best adapter" if event.kind == "best" else f"a {event.kind} checkpoint"
            self._log(f"saved {what} at step {event.step}: {self._short_path(event.path)}")
        elif isinstance(event, Failed):
            self._log(f"✖ failed ({event.kind}) at step {event.step}: {event.message}")
        elif isinstance(event, Finished):
            self._log(_finished_line(event.result))

    def _on_finished(self, result: TrainResult) -> None:
        self.plots.stop()
        if result.steps:
            self.progress.setValue(result.steps)  # steps between two logged ones (a Stop at 12 of log_every 5)
        summary = self.controller.last_summary() or _summary_of(result)
        self.summary_card.show_summary(summary, can_export=self.trained_model() is not None)
        # The card below holds a failure's message: the line only says how the run ended.
        self.stats_label.setText(_end_stats(result, self._last_step))
        self._notify(summary)
        self.sig_run_finished.emit(result)

    def _on_error(self, message: str, details: str) -> None:
        self.stats_label.setText(f"✖ Failed: {message}")  # never leave "Preparing the model and data…"
        self._log(f"✖ {message}")
        self.sig_error.emit(message, details)
        if self.show_dialogs:
            self._show_error(message, details)

    def _show_error(self, message: str, details: str) -> None:
        # open(), not exec(): the dialog is window-modal but the event loop (and tests) go on.
        if self.error_dialog is not None:
            self.error_dialog.close()
        box = QMessageBox(QMessageBox.Icon.Critical, "Training failed", message, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("run_error_dialog")
        box.setInformativeText("The run folder keeps its log. Fix the setting and press Start again.")
        if details:
            box.setDetailedText(details)
        box.finished.connect(self._forget_dialog)
        self.error_dialog = box
        box.open()

    def _on_config_changed(self, config: object) -> None:
        """While nothing runs, the panes match the config the next run will train."""
        if self.controller.state == IDLE and isinstance(config, RunConfig):
            self._show_confusion_tab(config.data)
            if self.samples_view.is_empty() and not self.samples_view.history:
                self.samples_view.clear(samples_note(config))

    def _show_confusion_tab(self, data: object) -> None:
        """The confusion matrix is a classifier's: its tab is hidden for a language model."""
        self.side_tabs.setTabVisible(self.confusion_tab, getattr(data, "kind", None) != "causal-lm")

    def _forget_dialog(self) -> None:
        self.error_dialog = None

    def _continue_from_card(self, folder: str, extra_steps: int) -> None:
        try:
            self.continue_run(folder, extra_steps)
        except (RuntimeError, OSError, ValueError) as exc:
            self._on_error(f"could not continue {folder}: {exc}", "")

    def _open_folder(self, folder: str) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(folder))

    def _notify(self, summary: RunSummary) -> None:
        """A desktop notification of the run's end while the user looks elsewhere (the tray's balloon
        where the platform has a system tray; nothing otherwise)."""
        if self.window().isActiveWindow():
            return
        self.last_notice = ("LoRA Studio: " + summary.status.replace("-", " "), notice_text(summary))
        if not QSystemTrayIcon.isSystemTrayAvailable():
            return
        if self._tray is None:
            self._tray = QSystemTrayIcon(self.window().windowIcon() or QApplication.windowIcon(), self)
        self._tray.show()
        self._tray.showMessage(*self.last_notice, QSystemTrayIcon.MessageIcon.Information, 8_000)

    def _short_path(self, path: str) -> str:
        """``path`` relative to the run folder (logged once at the start) when it lies inside it."""
        config = self.controller.config
        try:
            return str(Path(path).relative_to(config.output.dir)) if config else path
        except ValueError:
            return path

    def _log(self, line: str) -> None:
        bar = self.log.verticalScrollBar()
        following = bar.value() >= bar.maximum() - 2  # the user did not scroll up to read: keep the newest in view
        self.log.appendPlainText(line)
        if following:
            bar.setValue(bar.maximum())


# -- text helpers ------------------------------------------------------------------------------------
def step_stats(event: StepMetrics, *, paused: bool = False) -> str:
    """One line of run statistics for a StepMetrics event (no ETA while paused: it would be a lie)."""
    parts = [f"step {event.step}/{event.total_steps}", f"epoch {event.epoch:.2f}", f"loss {event.loss:.4f}",
             f"{event.samples_per_second:,.0f} samples/s"]
    if event.tokens_per_second is not None:
        parts.append(f"{event.tokens_per_second:,.0f} tokens/s")
    parts.append("paused" if paused else f"ETA {format_duration(event.eta_seconds)}")
    if event.memory_bytes is not None:
        parts.append(f"memory {format_bytes(event.memory_bytes)}")
    return "  ·  ".join(parts)


def samples_note(config: RunConfig) -> str:
    """What the samples pane says until a run's first samples arrive: when they will, or how to ask for them."""
    samples = config.samples
    if config.data.kind == "causal-lm":
        if not samples.prompts:
            return ("This run generates no samples: type prompts in Settings → Samples at each evaluation (one per "
                    "line; [samples] prompts in RUN.toml) to read what the model writes at each evaluation.")
        what = f"The generations of {len(samples.prompts)} prompt{'s' if len(samples.prompts) != 1 else ''}"
    else:
        if samples.count == 0:
            return ("This run labels no samples: set Settings → Samples at each evaluation → Examples above 0 "
                    "([samples] count) to see predictions at each evaluation.")
        what = f"The predicted labels of {samples.count} validation examples"
    training = config.training
    if training.eval_every:
        when = f"appear at each evaluation (every {training.eval_every} steps)"
    else:
        start = "at the start and " if training.eval_at_start else ""
        when = f"appear when the run evaluates (training.eval_every is 0: {start}at the end)"
    return f"{what} {when}."


def _eval_numbers(event: EvalMetrics) -> str:
    """An evaluation's loss and accuracy or perplexity."""
    metric = ""
    if event.accuracy is not None:
        metric = f", accuracy {event.accuracy:.1%}"
    elif event.perplexity is not None:
        metric = f", perplexity {event.perplexity:.2f}"
    return f"loss {event.loss:.4f}{metric}"


def _eval_line(event: EvalMetrics) -> str:
    """The log line of an evaluation."""
    return f"evaluation at step {event.step}: {_eval_numbers(event)}{' (best so far)' if event.is_best else ''}"


def _finished_line(result: TrainResult) -> str:
    """The log line of a run's end."""
    line = f"■ run {result.status} after {result.steps}/{result.total_steps} steps in {result.seconds:.1f} s"
    if result.trainable_parameters:
        line += f"; {result.trainable_parameters:,} trainable of {result.total_parameters:,} parameters"
    if result.adapter_dir:
        line += f"; weights in {Path(result.adapter_dir).name}/"
    return line


def notice_text(summary: RunSummary) -> str:
    """The desktop notification's text: steps, the metric after, the folder's name."""
    text = f"{summary.steps}/{summary.total_steps} steps in {format_duration(summary.seconds)}"
    if summary.after is not None:
        name = summary.after.metric_name
        value = f"{summary.after.metric:.1%}" if name == "accuracy" else f"{summary.after.metric:.4g}"
        text += f"; validation {name} {value}"
    if summary.error:
        text += f"; {summary.error}"
    return f"{summary.run_dir.name}: {text}"


def _end_stats(result: TrainResult, last: StepMetrics | None) -> str:
    """The stats line once a run ended: its last numbers, without an ETA."""
    if result.status == "failed":
        return f"✖ Failed at step {result.steps}/{result.total_steps}"
    loss = f"  ·  loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    speed = f"  ·  {last.samples_per_second:,.0f} samples/s" if last is not None else ""
    return f"{result.status.replace('-', ' ')} at step {result.steps}/{result.total_steps}{loss}{speed}"


def _summary_of(result: TrainResult) -> RunSummary:
    """A summary from the result alone (the worker crashed before it could read the folder)."""
    return RunSummary(status=result.status, steps=result.steps, total_steps=result.total_steps,
                      run_dir=Path(result.run_dir), before=None, after=None, best_step=result.best_step,
                      best_loss=result.best_eval_loss, seconds=result.seconds, adapter_dir=None, adapter_bytes=None,
                      checkpoint_dir=None, error=result.error)
