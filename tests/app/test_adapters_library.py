"""The Adapters tab's state: opening folders (checked against the base), switching, combining,
saving, deleting; the run just trained joining the list by itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_studio.app.state.adapter_library import THIS_RUN, AdapterLibrary, CombineRequest
from lora_studio.app.state.run_controller import RunController
from lora_studio.core import list_adapters

from short_runs import short_digits
from test_adapters_folders import (
    TARGETS,
    TOLERANCE,
    base_output,
    digits_session,
    other_base_adapter,
    own_output,
    pixels,
    saved_adapter,
)

JOB_MS = 30_000


@pytest.fixture
def library(qtbot, tmp_path: Path):
    session = digits_session(tmp_path / "runs")
    controller = RunController.for_session(session)
    found = AdapterLibrary(session, controller)
    yield found
    controller.stop_and_wait()
    assert found.wait_idle()


def _wait(qtbot, library: AdapterLibrary) -> None:
    qtbot.waitUntil(lambda: not library.is_busy(), timeout=JOB_MS)


def _output(library: AdapterLibrary, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return library.loaded().model.eval()(inputs)


def test_two_folders_are_listed_with_their_facts(qtbot, library, tmp_path: Path) -> None:
    a = saved_adapter(tmp_path / "sentiment", seed=1)
    b = saved_adapter(tmp_path / "topic", seed=2, rank=2)
    with qtbot.waitSignal(library.sig_done, timeout=JOB_MS) as done:
        library.open_folders([a, b])
    _wait(qtbot, library)
    assert done.args[0] == "Opened sentiment, topic"
    first, second = library.entries()
    assert (first.name, first.variant, first.rank, first.targets, first.origin) == (
        "sentiment", "LoRA", "4", tuple(TARGETS), str(a))
    assert second.rank == "2" and second.origin == str(b)
    # parameters: A (r x fan-in) and B (fan-out x r) of each layer, counted from the layer sizes
    layers = {"conv1": (1 * 9, 16), "conv2": (16 * 9, 32), "fc1": (512, 32)}
    assert first.parameters == sum(4 * (i + o) for i, o in layers.values())
    assert second.parameters == sum(2 * (i + o) for i, o in layers.values())
    assert first.size_bytes == 4 * first.parameters  # float32
    assert first.active and not second.active  # the first opened becomes active; more are added beside it
    assert library.loaded().model is not library.session.loaded.model  # the session's base stays plain
    assert list_adapters(library.session.loaded.model) == []


def test_activate_gives_each_adapter_its_own_outputs(qtbot, library, tmp_path: Path) -> None:
    folders = {name: saved_adapter(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}
    library.open_folders(list(folders.values()))
    _wait(qtbot, library)
    inputs = pixels()
    for name in ("b", "a", "b"):
        library.activate(name)
        _wait(qtbot, library)
        assert library.active() == name
        assert (_output(library, inputs) - own_output(folders[name], inputs)).abs().max() <= TOLERANCE
    library.disable_all()
    _wait(qtbot, library)
    assert library.active() is None
    assert (_output(library, inputs) - base_output(inputs)).abs().max() <= TOLERANCE


def test_an_adapter_for_another_base_is_refused_and_changes_nothing(qtbot, library, tmp_path: Path) -> None:
    good = saved_adapter(tmp_path / "good", seed=1)
    library.open_folders([good])
    _wait(qtbot, library)
    inputs = pixels()
    before_entries, before = library.entries(), _output(library, inputs)
    with qtbot.waitSignal(library.sig_error, timeout=JOB_MS) as refused:
        library.open_folders([other_base_adapter(tmp_path / "mlp")])
    _wait(qtbot, library)
    message = refused.args[0]
    assert message.startswith(f"Cannot open {tmp_path / 'mlp'}:") and "no module '0'" in message
    assert library.entries() == before_entries
    assert list_adapters(library.loaded().model) == ["good"]
    assert torch.equal(_output(library, inputs), before)


def test_combining_with_weights_one_and_zero_equals_the_first(qtbot, library, tmp_path: Path) -> None:
    a, b = saved_adapter(tmp_path / "a", seed=1), saved_adapter(tmp_path / "b", seed=2)
    library.open_folders([a, b])
    _wait(qtbot, library)
    with qtbot.waitSignal(library.sig_done, timeout=JOB_MS):
        library.combine(CombineRequest(("a", "b"), (1.0, 0.0), "linear", "mix"))
    _wait(qtbot, library)
    mix = library.entries()[-1]
    assert mix.name == "mix" and mix.origin == "combined from a, b (linear 1, 0)"
    library.activate("mix")
    _wait(qtbot, library)
    inputs = pixels()
    assert (_output(library, inputs) - own_output(a, inputs)).abs().max() <= 1e-5  # sqrt(w·s) factors: float32


def test_a_combination_the_engine_refuses_shows_its_reason(qtbot, library, tmp_path: Path) -> None:
    library.open_folders([saved_adapter(tmp_path / "r4", seed=1), saved_adapter(tmp_path / "r2", seed=2, rank=2)])
    _wait(qtbot, library)
    with qtbot.waitSignal(library.sig_error, timeout=JOB_MS) as refused:
        library.combine(CombineRequest(("r4", "r2"), (0.5, 0.5), "linear", "mix"))
    _wait(qtbot, library)
    assert "linear" in refused.args[0] and "rank" in refused.args[0] and "'svd'" in refused.args[0]  # what works
    request = CombineRequest(("r4", "r2"), (0.5, 0.5), "linear", "mix2")
    assert library.combination_problem(request) == refused.args[0]  # the form's live check says the same
    assert library.combination_problem(CombineRequest(("r4", "r2"), (0.5, 0.5), "svd", "mix2")) is None
    assert library.names() == ["r4", "r2"]
    assert CombineRequest(("r4",), (1.0,), "linear", "x").problem() == "Choose two or more adapters to combine"


def test_save_delete_and_reopen(qtbot, library, tmp_path: Path) -> None:
    a = saved_adapter(tmp_path / "a", seed=1)
    library.open_folders([a])
    _wait(qtbot, library)
    with qtbot.waitSignal(library.sig_saved, timeout=JOB_MS) as saved:
        library.save("a", tmp_path / "saved")
    written = Path(saved.args[0])
    assert written == tmp_path / "saved" / "a"  # PEFT's rule: a named adapter in its sub-folder
    library.delete("a")
    _wait(qtbot, library)
    assert library.names() == []
    library.open_folders([written])
    _wait(qtbot, library)
    inputs = pixels()
    assert library.names() == ["a"]
    assert (_output(library, inputs) - own_output(a, inputs)).abs().max() <= TOLERANCE


def test_the_run_just_trained_joins_the_list(qtbot, library, tmp_path: Path) -> None:
    controller = library.controller
    with qtbot.waitSignal(library.sig_changed, timeout=60_000):
        controller.start(short_digits(tmp_path / "runs" / "digits-short", steps=5))
    _wait(qtbot, library)
    entry = library.entries()[0]
    run_dir = str(tmp_path / "runs" / "digits-short")
    assert (entry.name, entry.origin, entry.run) == ("digits-short", THIS_RUN, run_dir)
    assert "fc2 (full)" in entry.targets  # the digits head trains fully with the adapter
    inputs = pixels()
    with torch.no_grad():
        trained = controller.trained_model().model.eval()(inputs)
    assert (_output(library, inputs) - trained).abs().max() <= TOLERANCE


def test_rename_keeps_the_adapter_and_its_origin(qtbot, library, tmp_path: Path) -> None:
    a = saved_adapter(tmp_path / "a", seed=1)
    library.open_folders([a, saved_adapter(tmp_path / "b", seed=2)])
    _wait(qtbot, library)
    with qtbot.waitSignal(library.sig_done, timeout=JOB_MS) as done:
        library.rename("a", "sentiment")
    _wait(qtbot, library)
    assert done.args[0] == "Renamed a to sentiment"
    assert library.names() == ["sentiment", "b"] and library.active() == "sentiment"
    assert library.entries()[0].origin == str(a)
    inputs = pixels()
    assert (_output(library, inputs) - own_output(a, inputs)).abs().max() <= TOLERANCE
    with qtbot.waitSignal(library.sig_error, timeout=JOB_MS) as refused:
        library.rename("b", "sentiment")
    assert "already" in refused.args[0]
    _wait(qtbot, library)
    assert library.names() == ["sentiment", "b"]


def test_another_model_starts_an_empty_list(qtbot, library, tmp_path: Path) -> None:
    from lora_studio.core import demo_config, load_model

    library.open_folders([saved_adapter(tmp_path / "a", seed=1)])
    _wait(qtbot, library)
    with qtbot.waitSignal(library.sig_changed, timeout=JOB_MS) as changed:
        library.session.set_loaded(load_model(demo_config("digits", output_dir=tmp_path).model))
    assert changed.args[0] == [] and library.loaded() is None


def test_an_adapter_whose_shapes_fit_but_whose_base_differs_is_refused(qtbot, library, tmp_path: Path) -> None:
    import copy

    from lora_studio.core import LoraConfig, attach, save_adapter

    other = copy.deepcopy(library.session.loaded.model)
    other.fc2 = torch.nn.Linear(32, 5)  # another head: the adapted layers have the same shapes, the base does not
    folder = save_adapter(attach(other, LoraConfig(r=4, alpha=8, targets=TARGETS)), tmp_path / "five-classes")
    with qtbot.waitSignal(library.sig_error, timeout=JOB_MS) as refused:
        library.open_folders([folder])
    _wait(qtbot, library)
    assert "trained on another base model" in refused.args[0] and "architecture" in refused.args[0]
    assert library.entries() == [] and list_adapters(library.loaded().model) == []


def test_without_a_model_opening_says_to_load_one(qtbot, tmp_path: Path) -> None:
    from lora_studio.app.state.adapter_library import NO_MODEL
    from lora_studio.app.state.session import StudioSession

    library = AdapterLibrary(StudioSession())
    with qtbot.waitSignal(library.sig_error, timeout=JOB_MS) as refused:
        library.open_folders([saved_adapter(tmp_path / "a", seed=1)])
    assert refused.args[0] == NO_MODEL
    _wait(qtbot, library)
    assert library.entries() == [] and library.loaded() is None and library.wait_idle()
