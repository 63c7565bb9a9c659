"""Adapter folders for the Adapters tab's tests (imported by test_adapters_library.py and
test_adapters_panel.py): tiny adapters on the digits demo's base, saved with ``save_adapter``, each
nudged so it answers differently from the base and from the other; one for another base; the
session that holds the base.  Offline and fast (the digits CNN is a few thousand weights)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from lora_studio.app.state.session import StudioSession
from lora_studio.core import LoadedModel, LoraConfig, attach, demo_config, load_model, save_adapter

TARGETS = ["conv1", "conv2", "fc1"]
TOLERANCE = 1e-6  # the same weights on the same input: float32 gives the same numbers up to reordering


@functools.cache
def digits_base() -> LoadedModel:
    """The digits demo's base (no adapter): shared, never changed (the library copies it)."""
    loaded = load_model(demo_config("digits", output_dir="unused").model)
    loaded.model.eval()
    return loaded


def digits_session(out: Path) -> StudioSession:
    """A session with the digits demo's base loaded, its runs going to ``out``."""
    config = demo_config("digits", output_dir=out)
    session = StudioSession(config=config)
    session.set_loaded(digits_base())
    return session


def pixels(count: int = 6, seed: int = 0) -> torch.Tensor:
    """Inputs the digits CNN takes: 8x8 grey pictures."""
    return torch.randn(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def adapted_copy(seed: int, rank: int = 4, head: bool = False) -> nn.Module:
    """A copy of the base with a rank-``rank`` adapter whose B factors are random (a fresh one's are zero);
    ``head``: the classifier head ``fc2`` trained fully too (as a run trains it), its copy nudged."""
    lora = LoraConfig(r=rank, alpha=2 * rank, targets=TARGETS, modules_to_save=["fc2"] if head else [])
    model = attach(copy.deepcopy(digits_base().model), lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def saved_adapter(folder: Path, seed: int, rank: int = 4, head: bool = False) -> Path:
    """An adapter folder (PEFT's format) for the digits base."""
    return save_adapter(adapted_copy(seed, rank, head), folder, base_model_name_or_path="demo:digits")


def other_base_adapter(folder: Path) -> Path:
    """An adapter folder for another model (a two-layer MLP): it does not fit the digits base."""
    torch.manual_seed(0)
    model = attach(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), LoraConfig(r=2, alpha=2, targets=["0"]))
    return save_adapter(model, folder)


def own_output(folder: Path, inputs: torch.Tensor) -> torch.Tensor:
    """What the adapter in ``folder`` answers on its own: a fresh copy of the base with only it."""
    from lora_studio.core import load_adapter

    model = copy.deepcopy(digits_base().model)
    load_adapter(model, folder)
    with torch.no_grad():
        return model.eval()(inputs)


def base_output(inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return digits_base().model(inputs)


def test_the_nudged_adapters_differ_from_the_base_and_each_other(tmp_path: Path) -> None:
    inputs = pixels()
    a = own_output(saved_adapter(tmp_path / "a", seed=1), inputs)
    b = own_output(saved_adapter(tmp_path / "b", seed=2), inputs)
    assert (a - base_output(inputs)).abs().max() > 1e-2
    assert (a - b).abs().max() > 1e-2
    assert dataclasses.is_dataclass(digits_base())
