"""Live counts: total and trainable parameters, the adapter file's size, and training memory
against the device's, with a warning when it does not fit.

Recomputed from shapes on every ``sig_tree_changed`` (which fires for each selection, rank or
training change), so the figures move the instant the user ticks a layer.
"""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QProgressBar, QVBoxLayout, QWidget

from ..state.counts_estimate import CountsEstimate, estimate_counts
from ..state.session import StudioSession

GIB = 1024**3


def human_bytes(n: int) -> str:
    """Bytes as KiB/MiB/GiB with three significant figures."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


class CountsPanel(QWidget):
    """Parameter counts and memory for the config as it stands."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.estimate: CountsEstimate | None = None
        self.total_label = QLabel("—")
        self.trainable_label = QLabel("—")
        self.file_label = QLabel("—")
        self.memory_label = QLabel("—")
        self.memory_bar = QProgressBar()
        self.memory_bar.setTextVisible(True)
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #c0392b; font-weight: bold")
        self.warning_label.hide()

        box = QGroupBox("Counts")
        form = QFormLayout(box)
        form.addRow("Total parameters", self.total_label)
        form.addRow("Trainable", self.trainable_label)
        form.addRow("Adapter file", self.file_label)
        form.addRow("Training memory", self.memory_label)
        self.device_label = QLabel("Device")
        form.addRow(self.device_label, self.memory_bar)
        form.addRow(self.warning_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        session.sig_tree_changed.connect(lambda _tree: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        """Recompute from the session's model and config (shapes only)."""
        model, tree = self.session.browse_model, self.session.tree
        if model is None or tree is None:
            self.estimate = None
            return
        config = self.session.config
        self.estimate = e = estimate_counts(model, tree, self.session.training_lora(), config.training, config.data)
        self.total_label.setText(f"{e.total:,}")
        self.trainable_label.setText(f"{e.trainable:,} ({e.trainable_percent:.2f}%)")
        self.file_label.setText(f"≈ {human_bytes(e.adapter_file_bytes)} ({e.adapter:,} float32 values)")
        self.memory_label.setText(f"≈ {human_bytes(e.memory.total)} at {config.training.precision}")
        self.memory_label.setToolTip(f"{e.memory}\nActivations are an order-of-magnitude figure for batch "
                                     f"{config.training.batch_size // config.training.grad_accumulation} per micro-batch.")
        if e.device_bytes:
            percent = min(100, round(100 * e.memory.total / e.device_bytes))
            self.memory_bar.setValue(percent)
            self.memory_bar.setFormat(f"{percent}% of {human_bytes(e.device_bytes)}")
        else:
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat("memory unknown")
        self.memory_bar.setToolTip(f"{e.device_name}: the device training.device = "
                                   f"{config.training.device!r} picks")
        self.device_label.setText(e.device_name.split(" (")[0])
        self.warning_label.setVisible(e.exceeds_device)
        if e.exceeds_device:
            self.warning_label.setText(
                f"Needs about {human_bytes(e.memory.total)}, more than the {human_bytes(e.device_bytes or 0)} of "
                f"{e.device_name}: lower the batch size, raise gradient accumulation, or use bfloat16."
            )
