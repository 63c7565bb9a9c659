"""The Try tab's state (TryRunner): what it answers equals core's predict/generate for the same
input, base and adapted; the base equals the model with adapters disabled; Stop ends a stream
within one token; a newer request replaces an older one; a paused run's own model is tried; a run
folder opens; failures are readable lines."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from short_runs import short_digits
from test_try_models import TEXTS, digit_images, digits_model, story_model, text_model

import lora_studio.app.state.try_runner as try_runner_module
from lora_studio.app.state.run_controller import IDLE, PAUSED, RunController
from lora_studio.app.state.try_device import autocast_for, try_device_for
from lora_studio.app.state.try_runner import TryRunner, batched_pieces
from lora_studio.app.state.try_sources import LIVE, NOTHING_TO_TRY, OPENED, TRAINED
from lora_studio.core import (
    CancelToken,
    GeneratedPiece,
    GenerationSettings,
    RunConfig,
    demo_config,
    disable_adapters,
    generate_text,
    predict,
    train,
)

TIMEOUT_MS = 60_000
TOLERANCE = 1e-6


@pytest.fixture
def runner(qtbot):
    made = TryRunner()
    yield made
    assert made.wait_idle(TIMEOUT_MS)


def _predicted(qtbot, runner: TryRunner, inputs, top_k: int = 3):
    with qtbot.waitSignal(runner.sig_predictions, timeout=TIMEOUT_MS) as answer:
        assert runner.predict(inputs, top_k) is not None
    return answer.args[0]


def _same(found, expected) -> None:
    """Predictions equal: the same inputs, labels in the same order, probabilities to 1e-6."""
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got.input == want.input
        for side in ("adapted", "base"):
            mine, theirs = getattr(got, side), getattr(want, side)
            assert [s.label for s in mine] == [s.label for s in theirs], (side, got.input)
            for a, b in zip(mine, theirs, strict=True):
                assert a.probability == pytest.approx(b.probability, abs=TOLERANCE)


def _base_is_adapters_off(loaded, inputs, found, top_k: int = 3) -> None:
    """Every base column equals the adapted column of the same model with its adapters disabled."""
    with disable_adapters(loaded.model):
        off = predict(loaded, inputs, top_k=top_k, compare_base=False)
    for got, want in zip(found, off, strict=True):
        assert [s.label for s in got.base] == [s.label for s in want.adapted]
        for a, b in zip(got.base, want.adapted, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=TOLERANCE)


def _wait_for_steps(qtbot, controller: RunController, steps: int) -> None:
    """Until the run has trained ``steps`` steps; a run that ends first fails the test with its error."""
    qtbot.waitUntil(lambda: not controller.is_running() or controller.live_model.step >= steps, timeout=TIMEOUT_MS)
    result = controller.last_result()
    assert controller.is_running(), f"the run ended before step {steps}: {result.status if result else ''} " \
        f"{result.error if result else ''}"


def test_nothing_to_try_says_what_to_do(qtbot, runner) -> None:
    assert runner.sources() == [] and runner.current() is None
    with qtbot.waitSignal(runner.sig_error) as error:
        assert runner.predict(["a"]) is None
    assert error.args[0] == NOTHING_TO_TRY and "train a run, pause it, or open an adapter folder" in NOTHING_TO_TRY


def test_digits_predictions_equal_core_and_the_base_is_the_model_with_adapters_off(qtbot, runner, tmp_path) -> None:
    loaded = digits_model()
    images = digit_images(tmp_path / "digits")
    source = runner.try_model(loaded, "Digits with a nudged adapter")
    assert runner.current() == source and source.kind == OPENED and source.task == "image-classification"
    assert source.title.startswith("Digits with a nudged adapter (") and "cpu" in source.title
    outcome = _predicted(qtbot, runner, images, top_k=3)
    _same(outcome.predictions, predict(loaded, images, top_k=3))
    _base_is_adapters_off(loaded, images, outcome.predictions)
    assert not runner.is_busy()


def test_text_predictions_equal_core_and_the_base_is_the_model_with_adapters_off(qtbot, runner) -> None:
    loaded = text_model()
    runner.try_model(loaded, "MiniLM with a nudged adapter")
    outcome = _predicted(qtbot, runner, TEXTS, top_k=2)
    expected = predict(loaded, TEXTS, top_k=2)
    _same(outcome.predictions, expected)
    _base_is_adapters_off(loaded, TEXTS, outcome.predictions, top_k=2)
    assert all(len(p.adapted) == 2 for p in outcome.predictions)


def test_a_generation_streams_both_sides_and_ends_as_core_generates(qtbot, runner) -> None:
    loaded = story_model()
    runner.try_model(loaded, "Story demo")
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, seed=3)
    pieces = []
    runner.sig_pieces.connect(pieces.extend)
    with qtbot.waitSignal(runner.sig_generation_finished, timeout=TIMEOUT_MS) as finished:
        assert runner.generate("Once upon a time", settings) is not None
    outcome = finished.args[0]
    expected = generate_text(loaded, "Once upon a time", settings)
    assert outcome.texts == expected and not outcome.stopped
    assert {p.which for p in pieces} == {"adapted", "base"}
    for side in ("adapted", "base"):  # the streamed pieces, in order, make the whole text
        assert "".join(p.text for p in pieces if p.which == side) == expected[side]
    assert expected["adapted"] != expected["base"], "the nudged adapter should change the story"


def test_stop_ends_a_stream_within_one_token(qtbot, runner, monkeypatch) -> None:
    loaded = story_model()
    runner.try_model(loaded, "Story demo")
    real = try_runner_module.generate_stream
    produced: list[str] = []  # the text of every piece core yielded, counted on the worker thread
    lock = threading.Lock()

    def counting(*args, **kwargs):  # the real generator, its pieces counted as they are made
        for piece in real(*args, **kwargs):
            with lock:
                produced.append(piece.text)
            yield piece

    monkeypatch.setattr(try_runner_module, "generate_stream", counting)
    settings = GenerationSettings(max_new_tokens=400, temperature=1.0, top_p=1.0, seed=1)
    with qtbot.waitSignal(runner.sig_generation_finished, timeout=TIMEOUT_MS) as finished:
        runner.generate("Once upon a time", settings)
        qtbot.waitUntil(lambda: len(produced) >= 6, timeout=TIMEOUT_MS)
        with lock:
            runner.stop()
            at_stop = len(produced)
    outcome = finished.args[0]
    after = [text for text in produced[at_stop:] if text]
    assert outcome.stopped
    assert len(after) <= 1, f"{len(after)} tokens were generated after Stop"
    total = sum(len(text) > 0 for text in produced)
    assert total < 2 * settings.max_new_tokens


def test_a_new_request_replaces_the_one_in_progress(qtbot, runner) -> None:
    loaded = story_model()
    runner.try_model(loaded, "Story demo")
    finished = []
    runner.sig_generation_finished.connect(finished.append)
    first = runner.generate("Once upon a time", GenerationSettings(max_new_tokens=400, temperature=1.0, seed=1))
    second = runner.generate("The cat", GenerationSettings(max_new_tokens=5, temperature=0.0))
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    assert runner.wait_idle(TIMEOUT_MS)
    assert [outcome.request for outcome in finished] == [second] and first != second
    assert finished[0].texts == generate_text(loaded, "The cat", GenerationSettings(max_new_tokens=5, temperature=0.0))


def test_failures_are_readable_lines(qtbot, runner, tmp_path) -> None:
    runner.try_model(digits_model(), "Digits")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with qtbot.waitSignal(runner.sig_error, timeout=TIMEOUT_MS) as error:
        runner.predict([str(bad)])
    assert "not_an_image.png" in error.args[0] and "Traceback" not in error.args[0]
    assert not runner.is_busy()
    with qtbot.waitSignal(runner.sig_error, timeout=TIMEOUT_MS) as error:
        runner.open_folder(tmp_path)
    assert str(tmp_path) in error.args[0] and "run folder" in error.args[0]
    with qtbot.waitSignal(runner.sig_error) as error:
        runner.generate("x", GenerationSettings(max_new_tokens=0))
    assert "max new tokens" in error.args[0].lower()


def test_a_run_folder_opens_on_its_training_device(qtbot, runner, tmp_path) -> None:
    config = short_digits(tmp_path / "run", steps=3)
    result = train(config)
    assert result.status == "finished"
    with qtbot.waitSignal(runner.sig_source_changed, timeout=TIMEOUT_MS) as changed:
        runner.open_folder(result.run_dir)
    source = changed.args[0]
    assert source.kind == OPENED and source.task == "image-classification" and "cpu" in source.title
    assert source.title.startswith("Opened run folder run (") and source.has_adapter
    images = digit_images(tmp_path / "digits", "17")
    outcome = _predicted(qtbot, runner, images)
    _same(outcome.predictions, predict(source.loaded, images, top_k=3))
    # The adapter folder inside it: the adapter on its base, on the device of the run around it.
    with qtbot.waitSignal(runner.sig_source_changed, timeout=TIMEOUT_MS) as changed:
        runner.open_folder(Path(result.run_dir) / "adapter")
    adapter = changed.args[0]
    assert adapter.title.startswith("Opened adapter folder adapter (cpu") and adapter.loaded is not source.loaded
    outcome = _predicted(qtbot, runner, images)
    _same(outcome.predictions, predict(adapter.loaded, images, top_k=3))
    _base_is_adapters_off(adapter.loaded, images, outcome.predictions)


def test_the_device_follows_the_run_config() -> None:
    config = RunConfig()
    cpu = config.replace(training=dataclasses.replace(config.training, device="cpu", precision="bfloat16"))
    device = try_device_for(cpu)
    assert str(device.device) == "cpu" and device.precision == "float32"  # autocast on CUDA only, as training
    assert autocast_for(device.device, "bfloat16")().__class__.__name__ == "nullcontext"


def test_a_paused_run_lends_its_model_and_the_finished_run_follows(qtbot, runner, tmp_path) -> None:
    controller = RunController()
    tried = TryRunner(controller)
    try:
        controller.start(short_digits(tmp_path / "run", steps=400, eval_every=0))
        _wait_for_steps(qtbot, controller, 3)
        controller.pause()
        qtbot.waitUntil(lambda: tried.current() is not None and tried.current().kind == LIVE, timeout=TIMEOUT_MS)
        assert "paused at step" in tried.current().title
        images = digit_images(tmp_path / "digits", "0358")
        outcome = _predicted(qtbot, tried, images)
        assert outcome.step is not None and outcome.step >= 3
        with controller.live_model.borrow() as parts:  # the run is paused: the same weights
            assert parts.step == outcome.step
            expected = predict(parts.loaded, images, top_k=3, device=parts.device, autocast=parts.autocast)
            _base_is_adapters_off(parts.loaded, images, outcome.predictions)
        _same(outcome.predictions, expected)
        assert f"paused at step {outcome.step}" in tried.current().title
        with qtbot.waitSignal(controller.sig_run_finished, timeout=TIMEOUT_MS):
            controller.stop()
        assert controller.state == IDLE
        assert [s.kind for s in tried.sources()] == [TRAINED] and tried.current().kind == TRAINED
        assert tried.current().loaded is controller.trained_model()
    finally:
        if controller.state == PAUSED:
            controller.resume()
        controller.stop_and_wait(TIMEOUT_MS)
        assert tried.wait_idle(TIMEOUT_MS)


def test_a_short_run_ends_with_its_trained_model_as_the_only_source(qtbot, runner, tmp_path) -> None:
    # A run of two steps ends before anyone pauses it: its live model (if it was offered) goes with it.
    controller = RunController()
    tried = TryRunner(controller)
    try:
        with qtbot.waitSignal(controller.sig_run_finished, timeout=TIMEOUT_MS):
            controller.start(short_digits(tmp_path / "run", steps=2))
        assert [s.kind for s in tried.sources()] == [TRAINED]
        assert Path(tried.current().folder).name == "run"
    finally:
        controller.stop_and_wait(TIMEOUT_MS)
        assert tried.wait_idle(TIMEOUT_MS)


def test_pieces_reach_the_ui_at_most_thirty_times_a_second_and_end_after_a_cancel() -> None:
    now = [0.0]

    def pieces(count: int, step_s: float):
        for i in range(count):
            now[0] += step_s
            yield GeneratedPiece("adapted" if i % 2 == 0 else "base", f"t{i}", i // 2)

    fast = list(batched_pieces(pieces(300, 0.001), CancelToken(), clock=lambda: now[0]))  # 1000 pieces a second
    assert [p.text for batch in fast for p in batch] == [f"t{i}" for i in range(300)]  # all, in order
    assert len(fast) <= 0.3 * 30 + 1  # 0.3 s of pieces: at most ~30 batches a second
    now[0] = 0.0
    slow = list(batched_pieces(pieces(5, 0.5), CancelToken(), clock=lambda: now[0]))  # two a second: each at once
    assert [len(batch) for batch in slow] == [1] * 5
    cancel = CancelToken()

    def cancelled_after(count: int):
        for i, piece in enumerate(pieces(100, 0.001)):
            if i == count:
                cancel.cancel()
            yield piece

    kept = [p for batch in batched_pieces(cancelled_after(10), cancel, clock=lambda: now[0]) for p in batch]
    assert 10 <= len(kept) <= 12


def test_a_paused_story_run_generates_with_its_own_model(qtbot, tmp_path) -> None:
    story_model()  # skips without the story demo
    config = demo_config("story", output_dir=tmp_path / "story", steps=200)
    config = config.replace(training=dataclasses.replace(config.training, eval_every=0, eval_at_start=False,
                                                          log_every=1, device="cpu", batch_size=4),
                            data=dataclasses.replace(config.data, max_length=64))
    controller = RunController()
    tried = TryRunner(controller)
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0)
    try:
        controller.start(config)
        _wait_for_steps(qtbot, controller, 2)
        controller.pause()
        qtbot.waitUntil(lambda: tried.current() is not None and tried.current().kind == LIVE, timeout=TIMEOUT_MS)
        assert tried.current().task == "causal-lm"
        with qtbot.waitSignal(tried.sig_generation_finished, timeout=TIMEOUT_MS) as finished:
            tried.generate("Once upon a time", settings)
        with controller.live_model.borrow() as parts:  # paused: the weights it generated with
            assert parts.step == finished.args[0].step
            expected = generate_text(parts.loaded, "Once upon a time", settings, device=parts.device,
                                     autocast=parts.autocast)
            training = parts.loaded.model.training
        assert finished.args[0].texts == expected
        assert training, "trying the model must give it back in training mode"
    finally:
        if controller.state == PAUSED:
            controller.resume()
        controller.stop_and_wait(TIMEOUT_MS)
        assert tried.wait_idle(TIMEOUT_MS)


def test_an_extended_run_lends_its_model_too(qtbot, tmp_path) -> None:
    result = train(short_digits(tmp_path / "run", steps=3, checkpoint_every=3))
    assert result.status == "finished"
    controller = RunController()
    tried = TryRunner(controller)
    try:
        controller.continue_run(result.run_dir, extra_steps=400)
        _wait_for_steps(qtbot, controller, 5)
        controller.pause()
        qtbot.waitUntil(lambda: tried.current() is not None and tried.current().kind == LIVE, timeout=TIMEOUT_MS)
        images = digit_images(tmp_path / "digits", "19")
        outcome = _predicted(qtbot, tried, images)
        assert outcome.step >= 5
        with controller.live_model.borrow() as parts:
            expected = predict(parts.loaded, images, top_k=3, device=parts.device, autocast=parts.autocast)
        _same(outcome.predictions, expected)
    finally:
        if controller.state == PAUSED:
            controller.resume()
        controller.stop_and_wait(TIMEOUT_MS)
        assert tried.wait_idle(TIMEOUT_MS)


def test_a_run_paused_before_its_model_is_built_is_tried_once_it_is(qtbot, tmp_path) -> None:
    controller = RunController()
    tried = TryRunner(controller)
    try:
        controller.start(short_digits(tmp_path / "run", steps=400, eval_every=0))
        controller.pause()  # at once: the model is still being built
        qtbot.waitUntil(lambda: tried.current() is not None and tried.current().kind == LIVE, timeout=TIMEOUT_MS)
        assert tried.current().title.startswith("Live run run: paused at step")
        outcome = _predicted(qtbot, tried, digit_images(tmp_path / "digits", "5"))
        assert outcome.step is not None and len(outcome.predictions) == 1
    finally:
        if controller.state == PAUSED:
            controller.resume()
        controller.stop_and_wait(TIMEOUT_MS)
        assert tried.wait_idle(TIMEOUT_MS)
