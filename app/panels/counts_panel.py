"""Live counts: total and trainable parameters, the adapter file's size, the training-memory estimate
against the device's memory (with a warning when it does not fit) and, beside it, the measured peak
of the last run; during a run the device bar shows real use (process CPU %, or GPU memory in use).

The figures are computed off the UI thread by a :class:`CountsEstimator`, 150 ms after the last
``sig_tree_changed`` (which fires for each selection, rank or training change): a keystroke in a
field never waits for them, and the previous figures stay until the new ones arrive.
"""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QProgressBar, QVBoxLayout, QWidget

from lora_studio.core import Failed, Finished, StepMetrics

from ..state.counts_estimate import CountsEstimate, CountsEstimator
from ..state.session import StudioSession

GIB = 1024**3
CPU_SAMPLE_MS = 1000


def human_bytes(n: int) -> str:
    """Bytes as KiB/MiB/GiB with three significant figures."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


class CpuUse:
    """This process's CPU use since the last reading, in percent of all cores (every thread counts:
    the run trains on a worker thread of the window's process)."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._last = (time.perf_counter(), time.process_time())

    def read(self) -> float:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        return max(0.0, min(100.0, 100.0 * cpu / (wall * self.cores))) if wall > 0 else 0.0


class CountsPanel(QWidget):
    """Parameter counts and memory for the config as it stands, and the last run's measured peak."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.estimate: CountsEstimate | None = None
        self.measured_peak: int | None = None  # bytes, from the last run's StepMetrics
        self.running = False
        self.estimator = CountsEstimator(self)
        self.estimator.sig_estimate.connect(self._show)
        self._cpu = CpuUse()
        self._cpu_timer = QTimer(self, interval=CPU_SAMPLE_MS)
        self._cpu_timer.timeout.connect(self._show_use)
        self.total_label = QLabel("—")
        self.trainable_label = QLabel("—")
        self.file_label = QLabel("—")
        self.memory_label = QLabel("—")
        self.memory_label.setWordWrap(True)
        self.peak_label = QLabel("no run yet")
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
        form.addRow("Last run's peak", self.peak_label)
        self.device_label = QLabel("Device")
        form.addRow(self.device_label, self.memory_bar)
        form.addRow(self.warning_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        session.sig_tree_changed.connect(lambda _tree: self.refresh())
        session.sig_run_event.connect(self._on_run_event)
        self.refresh()

    def refresh(self) -> None:
        """Ask for new figures from the session's model and config (computed off the UI thread)."""
        model, tree = self.session.browse_model, self.session.tree
        if model is None or tree is None:
            return
        config = self.session.config
        loaded = self.session.loaded
        self.estimator.request(model, tree, self.session.training_lora(), config.training, config.data,
                               config.model, loaded.task if loaded is not None else None)

    def wait_until_current(self, timeout_ms: int = 30_000) -> None:
        """Block until the figures answer the session as it stands (tests, benchmarks, screenshots)."""
        from PySide6.QtCore import QCoreApplication

        self.estimator.wait_done(timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.estimator.is_current() and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            self.estimator.wait_done(50)

    # -- showing ------------------------------------------------------------------------------
    def _show(self, e: object) -> None:
        if isinstance(e, Exception):  # a model the counts cannot read: say so, keep the window alive
            self.memory_label.setText(f"cannot estimate: {e}")
            return
        assert isinstance(e, CountsEstimate)
        self.estimate = e
        config = self.session.config
        self.total_label.setText(f"{e.total:,}")
        self.trainable_label.setText(f"{e.trainable:,} ({e.trainable_percent:.2f}%)")
        self.file_label.setText(f"≈ {human_bytes(e.adapter_file_bytes)} ({e.adapter:,} float32 values)")
        micro = max(1, config.training.batch_size // config.training.grad_accumulation)
        if e.memory is None:
            # One short line (a text that wraps after the form was laid out is cut off in the narrow counts
            # column, seen at 1366x768 and 1920x1080); the whole problem and the fix in the tooltip and the Data tab.
            self.memory_label.setText("the data does not fit the model")
            self.memory_label.setToolTip(f"{e.data_problem}. Choose a data kind this model trains on (the Data tab).")
        else:
            m = e.memory
            self.memory_label.setText(f"≈ {human_bytes(m.total)} estimated at {config.training.precision}")
            how = ("traced through the model's layers on the meta device" if m.activation_method == "traced"
                   else "a rough formula (the model could not be traced)")
            self.memory_label.setToolTip(
                f"weights {human_bytes(m.weights)}, gradients {human_bytes(m.gradients)}, optimizer "
                f"{human_bytes(m.optimizer_states)}, activations {human_bytes(m.activations)}\n"
                f"Activations for a micro-batch of {micro}: {how}."
            )
        if not self.running:
            self._show_device_estimate()
        self.warning_label.setVisible(e.exceeds_device)
        if e.exceeds_device and e.memory is not None:
            self.warning_label.setText(
                f"Needs about {human_bytes(e.memory.total)}, more than the {human_bytes(e.device_bytes or 0)} of "
                f"{e.device_name}: lower the batch size, raise gradient accumulation, or use bfloat16."
            )

    def _show_device_estimate(self) -> None:
        e = self.estimate
        if e is None:
            return
        self.device_label.setText(e.device_name.split(" (")[0])
        self.memory_bar.setToolTip(f"{e.device_name}: the device training.device = "
                                   f"{self.session.config.training.device!r} picks; the estimate's share of its memory")
        if e.device_bytes and e.memory is not None:
            percent = min(100, round(100 * e.memory.total / e.device_bytes))
            self.memory_bar.setValue(percent)
            self.memory_bar.setFormat(f"estimate: {human_bytes(e.memory.total)} of {human_bytes(e.device_bytes)}")
        else:
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat("memory unknown" if e.memory is not None else "data does not fit the model")

    # -- the run --------------------------------------------------------------------------------
    def _on_run_event(self, event: object) -> None:
        if isinstance(event, StepMetrics):
            if not self.running:
                self.running = True
                self._cpu.read()  # start the interval here
                self._cpu_timer.start()
                self._show_use()
            if event.memory_bytes is not None:
                self.measured_peak = event.memory_bytes
                self._show_peak(final=False)
        elif isinstance(event, (Finished, Failed)) and self.running:
            self.running = False
            self._cpu_timer.stop()
            self._show_peak(final=True)
            self._show_device_estimate()

    def _show_peak(self, final: bool) -> None:
        if self.measured_peak is None:
            return
        on_gpu = self._on_gpu()
        what = "CUDA max allocated" if on_gpu else "process memory growth"
        so_far = "" if final else " so far"
        estimate = self.estimate.memory.total if self.estimate and self.estimate.memory else None
        ratio = f", estimate ×{estimate / self.measured_peak:.2f}" if estimate and self.measured_peak else ""
        self.peak_label.setText(f"{human_bytes(self.measured_peak)} measured{so_far} ({what}{ratio})")
        self.peak_label.setToolTip(
            "CUDA: torch.cuda.max_memory_allocated since the run started (tensor bytes).\n"
            "CPU: growth of the process's peak resident memory over the run: model, data, optimizer and "
            "activations, plus the libraries' and allocator's share."
        )

    def _on_gpu(self) -> bool:
        e = self.estimate
        return e is not None and e.device_name.startswith("cuda")

    def _show_use(self) -> None:
        """During a run: the CPU's real use by this process (or the GPU memory in use)."""
        e = self.estimate
        if self._on_gpu() and e is not None and e.device_bytes and self.measured_peak is not None:
            percent = min(100, round(100 * self.measured_peak / e.device_bytes))
            self.device_label.setText("GPU memory")
            self.memory_bar.setValue(percent)
            self.memory_bar.setFormat(f"{human_bytes(self.measured_peak)} of {human_bytes(e.device_bytes)} in use")
            return
        percent = self._cpu.read()
        self.device_label.setText("CPU use")
        self.memory_bar.setValue(round(percent))
        self.memory_bar.setFormat(f"{percent:.0f}% of {self._cpu.cores} cores")
        self.memory_bar.setToolTip("This process's CPU time over the last second, all threads, as a share of "
                                   "every core (the run trains on a thread of this process).")
