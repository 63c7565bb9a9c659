"""What the current config would train, before anything is attached: parameter counts, the adapter's
file size and a training-memory estimate against the device's memory.  QtCore only (the panel shows it).

Everything is read from shapes (``describe`` and ``estimate_training_memory``, whose activation term
traces a meta-device copy of the model), so it works on a meta-device model and never touches the
loaded weights.  It takes tens of milliseconds on a real transformer, so :class:`CountsEstimator`
computes it once typing pauses, debounced: a keystroke only restarts a timer, and a result that a
newer request has overtaken is dropped by its generation number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from lora_studio.core import (
    BatchShape,
    DataConfig,
    LoraConfig,
    MemoryEstimate,
    ModelConfig,
    ModuleInfo,
    TrainingConfig,
    adapter_parameter_count,
    count_parameters,
    data_kind_problem,
    device_description,
    device_total_memory,
    estimate_training_memory,
    resolve_device,
)

if TYPE_CHECKING:
    from torch import nn

ADAPTER_BYTES_PER_PARAMETER = 4  # adapters are saved in float32 (safetensors), whatever the base's precision
IMAGE_SHAPES = {"digits": (1, 8, 8)}  # what the digits demo feeds; other images are RGB at data.image_size
DEFAULT_IMAGE_SIDE = 224
TEXT_KINDS = ("text-classification", "causal-lm")
DEBOUNCE_MS = 150  # typing "128" computes once, 150 ms after the last key


@dataclass(frozen=True)
class CountsEstimate:
    """Counts and sizes for the counts panel."""

    total: int  # base + adapter factors + trained copies of modules_to_save
    trainable: int
    adapter: int  # parameters the adapter file holds
    memory: MemoryEstimate | None  # None when the data does not fit the model (``data_problem`` says why)
    device_name: str
    device_bytes: int | None  # None when the device's memory is unknown
    data_problem: str | None = None

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def adapter_file_bytes(self) -> int:
        return self.adapter * ADAPTER_BYTES_PER_PARAMETER

    @property
    def exceeds_device(self) -> bool:
        return self.memory is not None and self.device_bytes is not None and self.memory.total > self.device_bytes


def micro_batch_shape(training: TrainingConfig, data: DataConfig) -> BatchShape:
    """What one micro-batch feeds the model: ``data.max_length`` tokens per sample for text, the
    image size (the digits demo's 8×8 grey, else RGB at ``data.image_size`` or 224) for images."""
    micro_batch = max(1, training.batch_size // training.grad_accumulation)
    if data.kind in TEXT_KINDS:
        return BatchShape(micro_batch, length=data.max_length)
    side = data.image_size or DEFAULT_IMAGE_SIDE
    return BatchShape(micro_batch, image=IMAGE_SHAPES.get(data.kind, (3, side, side)))


def tokens_per_micro_batch(training: TrainingConfig, data: DataConfig) -> int:
    """Positions one micro-batch holds (tokens or pixels)."""
    return micro_batch_shape(training, data).positions


def device_memory(device: str) -> tuple[str, int | None]:
    """(a readable name, total bytes or None) of the device ``training.device`` picks, by the
    trainer's own choice (``auto``: CUDA, then Apple MPS, then the CPU and its system memory)."""
    try:
        chosen = resolve_device(device)
    except ValueError:  # an explicit device this machine lacks: the run would be refused too
        return f"{device} (not available)", None
    return device_description(chosen), device_total_memory(chosen)


def estimate_counts(
    model: nn.Module, tree: ModuleInfo, lora: LoraConfig, training: TrainingConfig, data: DataConfig,
    model_config: ModelConfig | None = None, task: str | None = None,
) -> CountsEstimate:
    """Counts for ``model`` with ``lora`` attached (``tree`` is ``describe(model, lora)``).

    With ``model_config`` (and the loaded model's ``task``), data of a kind that cannot train the
    model gives no memory figure but ``data_problem``: an image batch through a text model would
    be an absurd estimate, not a useful one."""
    base = count_parameters(model)
    problem = data_kind_problem(data.kind, model_config, task) if model_config is not None else None
    memory = None
    if problem is None:
        memory = estimate_training_memory(
            model, lora, precision=training.precision, batch=micro_batch_shape(training, data), tree=tree
        )
    name, total_bytes = device_memory(training.device)
    adapter = adapter_parameter_count(tree, lora)
    if training.mode == "full":
        trainable, adapter = base.total, 0
    elif training.mode == "head":  # only the fully trained copies: the head and modules_to_save
        trainable, adapter = adapter - sum(node.added_parameters for node in tree.walk()), 0
    elif memory is not None:
        trainable = memory.gradients // 4  # the estimate keeps float32 gradients of what trains
    else:
        trainable = adapter  # the factors and the trained copies (biases aside): no memory figure to read it from
    return CountsEstimate(base.total + adapter, trainable, adapter, memory, name, total_bytes, problem)


class _Relay(QObject):
    """Carries a worker's result back to the UI thread (it lives there: the signal is queued)."""

    sig_done = Signal(int, object)


def _estimate_job(relay: _Relay, generation: int, args: tuple[Any, ...], latest) -> None:
    """One estimate; skipped when a newer request overtook it while it waited."""
    if generation != latest():
        return
    try:
        result: object = estimate_counts(*args)
    except Exception as exc:  # noqa: BLE001 - the panel shows the message, the window carries on
        result = exc
    try:
        relay.sig_done.emit(generation, result)
    except RuntimeError:
        pass  # the panel (and its relay) closed meanwhile: nobody is waiting for the figures


class CountsEstimator(QObject):
    """Debounced, off-thread :func:`estimate_counts`: :meth:`request` after every change, and
    ``sig_estimate`` delivers the figures of the newest request only."""

    sig_estimate = Signal(object)
    """A CountsEstimate for the latest request (or the Exception that computing it raised)."""

    def __init__(self, parent: QObject | None = None, debounce_ms: int = DEBOUNCE_MS) -> None:
        super().__init__(parent)
        self.generation = 0  # of the newest request; a result of an older one is dropped
        self.delivered = 0  # generation of the last result delivered
        self._args: tuple[Any, ...] | None = None

        self._timer = QTimer(self, singleShot=True, interval=debounce_ms)
        self._timer.timeout.connect(self._submit)
        self._relay = _Relay(self)
        self._relay.sig_done.connect(self._done)

    def request(self, *args: Any) -> None:
        """Estimate :func:`estimate_counts` ``(*args)`` once typing pauses (restarts the timer)."""
        self.generation += 1
        self._args = args
        self._timer.start()

    def is_current(self) -> bool:
        """True when the last result delivered answers the newest request."""
        return self.delivered == self.generation

    def flush(self) -> None:
        """Submit a pending request now instead of after the debounce delay."""
        if self._timer.isActive():
            self._timer.stop()
            self._submit()

    def wait_done(self, msecs: int = 30_000) -> None:
        """Block until the worker is idle (tests, shutdown); results still arrive through the event loop."""
        self.flush()

    def _submit(self) -> None:
        if self._args is None:
            return
        # On the UI thread, once typing pauses: tracing a model on the meta device in a second Python
        # thread imports torch modules lazily through PySide's import hook, which deadlocked against the
        # UI thread (py-spy: the worker in shiboken's feature_import, the UI thread idle in a Qt call).
        # The trace takes tens of milliseconds on MiniLM; the debounce keeps it off every keystroke.
        _estimate_job(self._relay, self.generation, self._args, lambda: self.generation)

    def _done(self, generation: int, result: object) -> None:
        if generation != self.generation:
            return  # stale: the config changed while it was computed
        self.delivered = generation
        self.sig_estimate.emit(result)
