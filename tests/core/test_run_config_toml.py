"""A run config saved as TOML reads back equal, whatever its module names are made of.

The text is written by tomli-w: module names outside ASCII must become quoted keys (a bare
TOML key is ``A-Za-z0-9_-`` only), and fields left at None are left out (TOML has no null).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lora_studio.core import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainingConfig

NON_ASCII_NAMES = ["é", "x²", "layer.ü.q"]


def _config_naming(names: list[str]) -> RunConfig:
    lora = LoraConfig(
        r=4,
        targets=list(names),
        exclude=[f"{names[0]}.skip"],
        rank_pattern={name: 2 + i for i, name in enumerate(names)},
        alpha_pattern={name: 4.5 + i for i, name in enumerate(names)},
        modules_to_save=[f"head_{names[1]}"],
    )
    return RunConfig(lora=lora)


@pytest.mark.parametrize("names", [NON_ASCII_NAMES, ["with space", 'quote"d', "back\\slash", "a-b_c"]])
def test_module_names_round_trip_through_a_saved_file(tmp_path: Path, names: list[str]) -> None:
    config = _config_naming(names)
    path = config.save(tmp_path / "run.toml")
    tomllib.loads(path.read_text(encoding="utf-8"))  # valid TOML, not only readable by our own loader
    assert RunConfig.load(path) == config
    assert RunConfig.load(path).lora.rank_pattern == {name: 2 + i for i, name in enumerate(names)}


def test_none_fields_are_left_out_and_read_back_as_none() -> None:
    config = RunConfig(model=ModelConfig(task=None, head=None), data=DataConfig(label_names=None))
    text = config.to_toml()
    data = tomllib.loads(text)
    assert "task" not in data["model"] and "label_names" not in data["data"]
    assert "exclude" not in data["lora"] and "layers" not in data["lora"]
    assert RunConfig.from_toml(text) == config


def test_layout_has_one_table_per_section_in_order() -> None:
    config = RunConfig(lora=LoraConfig(rank_pattern={"q": 4}), training=TrainingConfig(device="cpu"))
    text = config.to_toml()
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers[:3] == ["[model]", "[data]", "[lora]"]
    assert headers[-3:] == ["[training]", "[output]", "[samples]"]
    assert tomllib.loads(text)["lora"]["rank_pattern"] == {"q": 4}


def test_regex_targets_and_special_characters_survive() -> None:
    config = RunConfig(
        lora=LoraConfig(targets=r"encoder\.layer\.\d+\.(query|value)"),
        training=TrainingConfig(betas=[0.9, 0.95]),
    )
    assert RunConfig.from_toml(config.to_toml()) == config
