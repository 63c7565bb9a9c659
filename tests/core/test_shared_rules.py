"""The rules the window shares with the engine, each with one source in ``lora_studio.core``.

The window previews what a run will do (which layers train fully, what the adapter file holds,
which device and how much memory), so it calls these same functions; here they are checked
against what the engine really does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lora_studio.core import (
    DEVICE_CHOICES,
    LoraConfig,
    TrainingConfig,
    adapter_parameter_count,
    attach,
    count_parameters,
    describe,
    device_description,
    device_total_memory,
    in_modules_to_save,
    resolve_device,
    training_lora_config,
)


class _Net(nn.Module):
    """A body, a two-layer head, and a module whose path ends in ``head`` too (``inner.head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        self.inner = nn.Module()
        self.inner.head = nn.Linear(4, 4)
        self.headless = nn.Linear(4, 4)


@pytest.mark.parametrize(
    ("name", "saved"),
    [
        ("head", True),  # named exactly
        ("head.1", True),  # inside a saved module: trained with it
        ("inner.head", True),  # a dotted suffix, as for targets
        ("inner", False),  # an ancestor of a saved module is not saved
        ("headless", False),  # a suffix must start at a dot
        ("block.0", False),
        ("", False),  # the model itself
    ],
)
def test_in_modules_to_save_follows_the_target_rule(name: str, saved: bool) -> None:
    config = LoraConfig(targets=["block.0"], modules_to_save=["head"])
    assert in_modules_to_save(config, name) is saved
    assert in_modules_to_save(["head"], name) is saved


def test_modules_inside_a_saved_module_are_never_targeted() -> None:
    config = LoraConfig(targets="all-linear", modules_to_save=["head"])
    tree = describe(_Net(), config)
    targeted = [node.name for node in tree.walk() if node.targeted]
    assert targeted == ["block.0", "block.1", "headless"]
    assert not any(in_modules_to_save(config, name) for name in targeted)


def test_adapter_parameter_count_is_what_attach_adds() -> None:
    config = LoraConfig(r=2, targets=["block.0", "headless"], modules_to_save=["head"])
    model = _Net()
    predicted = adapter_parameter_count(describe(model, config), config)
    attached = copy.deepcopy(model)
    attach(attached, config)
    assert predicted == count_parameters(attached).adapter
    factors = 2 * (2 * (4 + 4))  # two layers, A (r×in) and B (out×r)
    copies = (4 * 4 + 4) + (4 * 2 + 2) + (4 * 4 + 4)  # head (two layers) and inner.head
    assert predicted == factors + copies


def test_training_lora_config_adds_the_head_once() -> None:
    lora = LoraConfig(modules_to_save=["extra"])
    assert training_lora_config(lora, "fc").modules_to_save == ["extra", "fc"]
    assert training_lora_config(lora, None) == lora
    assert training_lora_config(lora.replace(modules_to_save=["fc"]), "fc").modules_to_save == ["fc"]


def test_device_choices_are_what_the_config_accepts() -> None:
    for choice in DEVICE_CHOICES:
        assert TrainingConfig(device=choice).device == choice
    with pytest.raises(ValueError, match="training.device"):
        TrainingConfig(device="tpu")


def test_device_memory_of_the_cpu_and_of_an_absent_card() -> None:
    cpu = torch.device("cpu")
    assert device_description(cpu) == "CPU (system memory)"
    total = device_total_memory(cpu)
    assert total is None or total > 2**20
    absent = torch.device("cuda", 99)
    assert device_total_memory(absent) is None
    assert device_description(absent) == "cuda:99 (absent)"


def test_auto_device_is_cuda_then_mps_then_cpu() -> None:
    chosen = resolve_device("auto")
    if torch.cuda.is_available():
        assert chosen == torch.device("cuda", 0)
    elif torch.backends.mps.is_available():
        assert chosen.type == "mps"
    else:
        assert chosen == torch.device("cpu")
    if torch.cuda.is_available():
        assert device_total_memory(chosen) == torch.cuda.get_device_properties(0).total_memory
