"""LiveModel: a run lends its model between steps; readers never see a step half-done, and
lending changes nothing in the training."""

import threading

import pytest
import torch
from run_configs import digits_run

from lora_studio.core.data.digits import load_digits_tensors
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.training import (
    CancelToken,
    EvalMetrics,
    LiveModel,
    StepMetrics,
    build_model,
    read_metrics,
    train,
)

FORWARD_TOLERANCE = 1e-6  # the same weights on the same CPU: the same logits
WAIT_SECONDS = 60  # a generous bound on waiting for the other thread (not a speed check)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


def _probe() -> torch.Tensor:
    images, _ = load_digits_tensors("rotate")
    return images[:32]


def _logits(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(pixels).clone()
    model.train(was)
    return out


class PausingReader:
    """Pauses the run after step ``at``, borrows the live model from another thread, then resumes."""

    def __init__(self, live: LiveModel, cancel: CancelToken, at: int, *, leave_in_eval: bool = False) -> None:
        self.live, self.cancel, self.at, self.leave_in_eval = live, cancel, at, leave_in_eval
        self.paused = threading.Event()
        self.step: int | None = None
        self.logits: torch.Tensor | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def on_event(self, event) -> None:
        if isinstance(event, StepMetrics) and event.step == self.at:
            self.cancel.pause()
            self.paused.set()

    def _read(self) -> None:
        try:
            assert self.paused.wait(WAIT_SECONDS)
            with self.live.borrow() as parts:
                assert parts is not None
                self.step = parts.step
                self.logits = _logits(parts.loaded.model, _probe().to(parts.device))
                if self.leave_in_eval:  # a careless reader: the trainer must train in train mode anyway
                    parts.loaded.model.eval()
        finally:
            self.cancel.resume()


def test_a_reader_during_a_pause_gets_the_model_of_the_paused_step(tmp_path) -> None:
    config = digits_run(tmp_path, dropout=0.1, max_steps=6, checkpoint_every=3)
    live, cancel = LiveModel(), CancelToken()
    reader = PausingReader(live, cancel, at=3)
    result = train(config, reader.on_event, cancel, live=live)
    reader.thread.join(WAIT_SECONDS)
    assert result.status == "finished", result.error
    assert reader.step == 3
    # the checkpoint of step 3, in a model built the way the run builds it
    loaded, _, _ = build_model(config)
    loaded.model.load_state_dict(load_safetensors(tmp_path / "checkpoints" / "step-00000003" / "model.safetensors"),
                                 strict=False)
    expected = _logits(loaded.model, _probe())
    assert torch.allclose(reader.logits, expected, atol=FORWARD_TOLERANCE, rtol=0)


def test_borrowing_before_or_after_a_run_gives_none(tmp_path) -> None:
    live = LiveModel()
    with live.borrow() as parts:
        assert parts is None
    assert train(digits_run(tmp_path, max_steps=2), live=live).status == "finished"
    assert not live.available
    with live.borrow() as parts:
        assert parts is None


def test_a_failed_run_withdraws_its_model(tmp_path) -> None:
    live = LiveModel()
    seen: list[bool] = []

    def on_event(event) -> None:
        if isinstance(event, StepMetrics):
            seen.append(live.available)
            raise RuntimeError("a listener broke")  # the run fails at its first step

    result = train(digits_run(tmp_path, max_steps=4), on_event, live=live)
    assert result.status == "failed" and seen == [True]  # lent while it ran
    assert not live.available


def test_training_is_the_same_with_a_live_model_and_a_reader(tmp_path) -> None:
    plain = tmp_path / "plain"
    assert train(digits_run(plain, dropout=0.1, max_steps=6, eval_every=2)).status == "finished"
    lent = tmp_path / "lent"
    live, cancel = LiveModel(), CancelToken()
    reader = PausingReader(live, cancel, at=2, leave_in_eval=True)
    result = train(digits_run(lent, dropout=0.1, max_steps=6, eval_every=2), reader.on_event, cancel, live=live)
    reader.thread.join(WAIT_SECONDS)
    assert result.status == "finished" and reader.step == 2

    def numbers(run_dir):
        return [(r["event"], r["step"], r["loss"]) for r in read_metrics(run_dir)
                if r["event"] in ("StepMetrics", "EvalMetrics")]

    assert numbers(plain) == numbers(lent)  # bit for bit: floats compared exactly
    a = load_safetensors(plain / "adapter" / "adapter_model.safetensors")
    b = load_safetensors(lent / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_training_thread_can_borrow_inside_its_own_step(tmp_path) -> None:
    live = LiveModel()
    steps: list[int] = []

    def on_event(event) -> None:
        if isinstance(event, EvalMetrics):  # emitted while the evaluation holds the model
            with live.borrow() as parts:
                steps.append(parts.step)

    result = train(digits_run(tmp_path, max_steps=4, eval_every=2), on_event, live=live)
    assert result.status == "finished" and steps == [2, 4]


def test_a_waiting_reader_goes_before_the_next_step() -> None:
    live = LiveModel()
    live.publish(object(), torch.device("cpu"), lambda: None)  # type: ignore[arg-type]
    order: list[str] = []
    in_step, end_step = threading.Event(), threading.Event()

    def trainer() -> None:
        with live.training(0):
            in_step.set()
            assert end_step.wait(WAIT_SECONDS)
        with live.training(1):
            order.append("step 1")

    def reader() -> None:
        with live.borrow() as parts:
            order.append(f"reader at {parts.step}")

    t = threading.Thread(target=trainer)
    t.start()
    assert in_step.wait(WAIT_SECONDS)
    r = threading.Thread(target=reader)
    r.start()
    for _ in range(10_000):  # until the reader waits on the step (bounded; no timing asserted)
        if live.waiting_readers:
            break
        threading.Event().wait(0.001)
    assert live.waiting_readers == 1 and order == []
    end_step.set()
    t.join(WAIT_SECONDS)
    r.join(WAIT_SECONDS)
    assert order == ["reader at 1", "step 1"]
    live.withdraw()
    assert not live.available
