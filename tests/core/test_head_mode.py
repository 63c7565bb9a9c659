"""``training.mode = "head"``: the baseline that trains only the classifier head (and
``lora.modules_to_save``) on frozen features; a head-only target says why it adapts nothing; a
rank above a layer's width is refused by name."""

from __future__ import annotations

import pytest
import torch
from run_configs import digits_run, with_training

from lora_studio.core.adapter.config import LoraConfig
from lora_studio.core.adapter.lifecycle import attach, oversized_ranks
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.training import Failed, train
from lora_studio.core.training.setup import build_model


def test_head_mode_trains_the_head_and_nothing_else(tmp_path) -> None:
    config = with_training(digits_run(tmp_path / "run", max_steps=4), mode="head")
    before = {k: v.clone() for k, v in build_model(config)[0].model.state_dict().items()}
    result = train(config)
    assert result.status == "finished"
    after = load_safetensors(tmp_path / "run" / "adapter" / "model.safetensors")
    assert set(after) == set(before)  # the whole model, as full fine-tuning saves it
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc2.bias", "fc2.weight"]
    assert result.trainable_parameters == before["fc2.weight"].numel() + before["fc2.bias"].numel()


def test_head_mode_with_modules_to_save_trains_those_too(tmp_path) -> None:
    config = with_training(digits_run(tmp_path / "run", max_steps=2), mode="head")
    config = config.replace(lora=config.lora.replace(modules_to_save=["fc1"]))
    model = build_model(config)[0].model
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]


def test_head_mode_without_a_head_says_what_to_do(tmp_path) -> None:
    from torch import nn

    from lora_studio.core.training.setup import train_only_the_head

    with pytest.raises(ValueError, match="lora.modules_to_save"):
        train_only_the_head(nn.Sequential(nn.Linear(2, 2)), [])


def test_targeting_only_the_head_names_modules_to_save_and_head_mode(tmp_path) -> None:
    config = digits_run(tmp_path / "run", max_steps=1)
    config = config.replace(lora=config.lora.replace(targets=["fc2"]))
    events = []
    assert train(config, events.append).status == "failed"
    message = next(e for e in events if isinstance(e, Failed)).message
    assert "'fc2'" in message and "modules_to_save" in message and "training.mode = 'head'" in message


def test_a_rank_above_a_layers_width_is_refused_naming_the_layers(tmp_path) -> None:
    config = digits_run(tmp_path / "run", max_steps=1)
    config = config.replace(lora=config.lora.replace(r=4096))
    events = []
    assert train(config, events.append).status == "failed"
    message = next(e for e in events if isinstance(e, Failed)).message
    assert "conv1 (r=4096, at most 9)" in message and "fc1 (r=4096, at most 32)" in message
    assert "lora.rank_pattern" in message and not (tmp_path / "run" / "adapter").exists()


def test_the_rank_limit_is_the_smaller_weight_dimension_and_attach_still_accepts_more() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 20), torch.nn.Conv2d(2, 16, 3))
    config = LoraConfig(r=10, targets=["0", "1"], rank_pattern={"1": 19})
    assert oversized_ranks(model, config) == [("0", 10, 3), ("1", 19, 16)]  # 3 inputs; 16 < 2*3*3 = 18
    attach(model, config)  # as PEFT does: an adapter made elsewhere must load
    assert model[0].lora_A["default"].weight.shape == (10, 3)


def test_a_head_run_exports_and_loads_as_the_whole_model(tmp_path) -> None:
    from lora_studio.core.cli import main
    from lora_studio.core.training.trained_run import load_trained_run

    config = with_training(digits_run(tmp_path / "run", max_steps=3, eval_every=3), mode="head")
    assert train(config).status == "finished"
    final = load_trained_run(tmp_path / "run").model.state_dict()
    saved = load_safetensors(tmp_path / "run" / "adapter" / "model.safetensors")
    assert all(torch.equal(final[k], saved[k]) for k in saved)
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "merged.safetensors")]) == 0
    merged = load_safetensors(tmp_path / "merged.safetensors")
    assert all(torch.equal(merged[k], saved[k]) for k in saved)
    assert main(["export", str(tmp_path / "run"), "--adapter", str(tmp_path / "a")]) == 2  # no adapter to write
