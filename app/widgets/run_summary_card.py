"""The card the Train tab shows when a run ends: how it ended, before → after, best step, time,
the classes that improved most (classifiers), adapter size, where its files are, and what to do
next (open the folder, export, compare, resume or extend).

The card only shows a :class:`~lora_studio.app.state.run_summary.RunSummary` and says what the
user asked for through its signals; the run panel acts on them.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import ClassChange

from ..state.run_summary import EvalPoint, RunSummary

DEFAULT_EXTRA_STEPS = 20
NAMED_CLASSES = 3  # "Improved most:" names this many classes (the card is one glance, not a table)
HEADLINES = {
    "finished": "✔ Run finished",
    "stopped-early": "✔ Run stopped early (no better validation loss)",
    "cancelled": "■ Run stopped",
    "failed": "✖ Run failed",
}


class RunSummaryCard(QFrame):
    """A run's summary with Open folder, Export…, Compare, and Resume or Extend by N steps."""

    sig_open_folder = Signal(str)
    """Open this folder in the file manager."""
    sig_export = Signal()
    """Open the export dialog on the run's model."""
    sig_compare = Signal(str)
    """Show this run folder in the History tab."""
    sig_resume = Signal(str)
    """Resume this run folder from its newest checkpoint."""
    sig_extend = Signal(str, int)
    """Train this (finished) run folder N more steps."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("run_summary_card")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.summary: RunSummary | None = None
        self.headline = QLabel()
        self.headline.setObjectName("run_summary_headline")
        font = self.headline.font()
        font.setBold(True)
        self.headline.setFont(font)
        self.metrics_label = QLabel()
        self.classes_label = QLabel()
        self.classes_label.setObjectName("run_summary_classes")
        self.files_label = QLabel()
        for label in (self.headline, self.metrics_label, self.classes_label, self.files_label):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
        self.close_button = QToolButton()
        self.close_button.setText("×")
        self.close_button.setToolTip("Hide this summary")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.hide)
        top = QHBoxLayout()
        top.addWidget(self.headline, 1)
        top.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)

        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Open the run folder in the file manager")
        self.open_button.clicked.connect(lambda: self.summary and self.sig_open_folder.emit(str(self.summary.run_dir)))
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the adapter or a merged model (Ctrl+E)")
        self.export_button.clicked.connect(self.sig_export.emit)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Show this run in the History tab beside the others")
        self.compare_button.clicked.connect(lambda: self.summary and self.sig_compare.emit(str(self.summary.run_dir)))
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(lambda: self.summary and self.sig_resume.emit(str(self.summary.run_dir)))
        self.extend_steps = QSpinBox()
        self.extend_steps.setRange(1, 10_000_000)
        self.extend_steps.setValue(DEFAULT_EXTRA_STEPS)
        self.extend_steps.setSuffix(" steps")
        self.extend_steps.setToolTip("How many steps to train past the run's end")
        self.extend_button = QPushButton("Extend by")
        self.extend_button.setToolTip("Train the finished run further, from its last checkpoint")
        self.extend_button.clicked.connect(
            lambda: self.summary and self.sig_extend.emit(str(self.summary.run_dir), self.extend_steps.value()))
        buttons = QHBoxLayout()
        for widget in (self.open_button, self.export_button, self.compare_button, self.resume_button,
                       self.extend_button, self.extend_steps):
            buttons.addWidget(widget)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.metrics_label)
        layout.addWidget(self.classes_label)
        layout.addWidget(self.files_label)
        layout.addLayout(buttons)
        self.hide()

    def show_summary(self, summary: RunSummary, *, can_export: bool = True) -> None:
        """Fill the card with ``summary`` and show it; Export only when the run left a model."""
        self.summary = summary
        self.headline.setText(headline(summary))
        self.metrics_label.setText(metrics_line(summary))
        self.metrics_label.setVisible(bool(self.metrics_label.text()))
        self.classes_label.setText(classes_line(summary.class_changes))
        self.classes_label.setToolTip(classes_tooltip(summary.class_changes))
        self.classes_label.setVisible(bool(self.classes_label.text()))
        self.files_label.setText(files_line(summary))
        self.files_label.setToolTip(str(summary.run_dir))
        self.export_button.setEnabled(can_export)
        self.compare_button.setEnabled(summary.run_dir.is_dir())
        self.open_button.setEnabled(summary.run_dir.is_dir())
        continuation = summary.continuation
        self.resume_button.setVisible(continuation == "resume")
        self.resume_button.setText(f"Resume from step {summary.steps}" if summary.steps else "Resume")
        self.resume_button.setToolTip(f"Continue to step {summary.total_steps} from {summary.checkpoint_dir}")
        for widget in (self.extend_button, self.extend_steps):
            widget.setVisible(continuation == "extend")
        self.show()


def headline(summary: RunSummary) -> str:
    """The card's first line: how the run ended, after how many steps, in how long."""
    title = HEADLINES.get(summary.status, f"Run {summary.status}")
    text = f"{title} — {summary.steps}/{summary.total_steps} steps in {format_duration(summary.seconds)}"
    if summary.status == "failed" and summary.error:
        text += f": {summary.error}"
    return text


def metrics_line(summary: RunSummary) -> str:
    """Before → after of the task's metric, and the best step; '' when the run never evaluated."""
    parts = []
    after, before = summary.after, summary.before
    if after is not None:
        name = after.metric_name
        if before is not None:
            parts.append(f"Validation {name} {point_text(before, name)} → {point_text(after, name)} "
                         f"(base at step 0 → step {after.step})")
        else:
            parts.append(f"Validation {name} {point_text(after, name)} at step {after.step} "
                         "(no base value: training.eval_at_start was off)")
    elif before is not None:
        parts.append(f"Base validation {before.metric_name} {point_text(before, before.metric_name)}")
    if summary.best_step is not None and summary.best_loss is not None:
        parts.append(f"best step {summary.best_step} (validation loss {summary.best_loss:.4f})")
    return "  ·  ".join(parts)


def classes_line(changes: tuple[ClassChange, ...] | list[ClassChange], count: int = NAMED_CLASSES) -> str:
    """``Improved most: 7 (40% → 95%), 1 (62% → 90%)`` from a classifier's per-class recall changes
    (largest first), and the class that got worst when one did; '' without changes (not a classifier,
    or one evaluation only)."""
    if not changes:
        return ""
    improved = [c for c in changes if c.improvement > 0][:count]
    worse = [c for c in changes if c.improvement < 0]
    parts = [("Improved most: " + ", ".join(_change_text(c) for c in improved)) if improved
             else "No class improved its recall"]
    if worse:
        parts.append(f"worse: {_change_text(worse[-1])}")  # the list is largest improvement first
    return "  ·  ".join(parts)


def classes_tooltip(changes: tuple[ClassChange, ...] | list[ClassChange]) -> str:
    """Every class's recall before → after, one per line (the card names only a few)."""
    if not changes:
        return ""
    lines = ["Recall per class (validation examples of the class predicted right), first → last evaluation:"]
    return "\n".join(lines + [_change_text(c) for c in changes])


def _change_text(change: ClassChange) -> str:
    return f"{change.name} ({change.recall_before:.0%} → {change.recall_after:.0%})"


def files_line(summary: RunSummary) -> str:
    """The adapter's size and where the run's files are."""
    where = f"Run folder: {summary.run_dir}"
    if summary.adapter_dir is not None and summary.adapter_bytes is not None:
        return f"Adapter {format_bytes(summary.adapter_bytes)} in {summary.adapter_dir.name}/  ·  {where}"
    return where


def point_text(point: EvalPoint, name: str) -> str:
    """One evaluation's value of metric ``name``."""
    if name == "accuracy" and point.accuracy is not None:
        return f"{point.accuracy:.1%}"
    if name == "perplexity" and point.perplexity is not None:
        return f"{point.perplexity:.2f}"
    return f"{point.loss:.4f}"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(count: int) -> str:
    """Bytes in the largest unit that keeps the number at or above 1 (KiB, MiB, GiB)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"
