"""Config validation names the field; target matching is pure and its errors say how to fix them."""

import copy

import pytest
import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, match_targets, preview_targets


@pytest.mark.parametrize(
    ("changes", "field", "shown"),
    [
        ({"r": 0}, "r", "0"),
        ({"r": 2.5}, "r", "2.5"),
        ({"alpha": 0}, "alpha", "0"),
        ({"alpha": -1.0}, "alpha", "-1.0"),
        ({"dropout": 1.0}, "dropout", "1.0"),
        ({"dropout": -0.1}, "dropout", "-0.1"),
        ({"targets": "(unclosed"}, "targets", "'(unclosed'"),
        ({"targets": []}, "targets", "empty list"),
        ({"exclude": "[bad"}, "exclude", "'[bad'"),
        ({"rank_pattern": {"(": 4}}, "rank_pattern", "'('"),
        ({"rank_pattern": {"q": 0}}, "rank_pattern", "['q']"),
        ({"alpha_pattern": {"q": -2}}, "alpha_pattern", "-2"),
        ({"layers": [-1]}, "layers", "[-1]"),
        ({"init": "xavier"}, "init", "'xavier'"),
        ({"bias": "some"}, "bias", "'some'"),
        ({"variant": "nope"}, "variant", "'nope'"),
    ],
)
def test_bad_values_name_the_field_and_value(changes: dict, field: str, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        LoraConfig(**changes)
    message = str(info.value)
    assert message.startswith(field), message
    assert shown in message, message


def test_config_round_trips_through_plain_data() -> None:
    config = LoraConfig(r=4, alpha=8, targets=r".*q", rank_pattern={"q": 2}, layers=[0, 1], modules_to_save=["head"])
    assert LoraConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown LoRA config field.*rnk"):
        LoraConfig.from_dict({**config.to_dict(), "rnk": 3})


def test_rank_and_alpha_patterns_follow_peft_rule() -> None:
    config = LoraConfig(r=8, alpha=16, rank_pattern={"attn.q": 2, r"layers\.1\..*": 4}, alpha_pattern={"q": 1})
    assert config.rank_for("model.layers.0.attn.q") == 2
    assert config.rank_for("model.layers.1.mlp.up") == 4
    assert config.rank_for("model.layers.0.mlp.up") == 8
    assert config.alpha_for("model.layers.0.attn.q") == 1.0
    assert config.alpha_for("model.layers.0.attn.qq") == 16.0, "a key matches a whole dotted component"
    assert LoraConfig(r=4, alpha=8, use_rslora=True).scaling_for("x") == 8 / 2


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({"q": nn.Linear(4, 4), "v": nn.Linear(4, 4), "norm": nn.LayerNorm(4)}) for _ in range(3)
        )
        self.depthwise = nn.Conv2d(4, 4, 3, groups=4)
        self.rnn = nn.LSTM(4, 4)
        self.head = nn.Linear(4, 2)


def test_name_list_regex_exclude_and_layers() -> None:
    model = Blocks()
    assert match_targets(model, LoraConfig(targets=["q"])) == [f"layers.{i}.q" for i in range(3)]
    assert match_targets(model, LoraConfig(targets=["layers.1.q", "head"])) == ["layers.1.q", "head"]
    assert match_targets(model, LoraConfig(targets=r"layers\.[02]\.(q|v)")) == [
        "layers.0.q", "layers.0.v", "layers.2.q", "layers.2.v"
    ]
    assert match_targets(model, LoraConfig(targets=["q", "v"], exclude=["layers.0.v"], layers=[0, 2])) == [
        "layers.0.q", "layers.2.q", "layers.2.v"
    ]
    assert match_targets(model, LoraConfig(targets="all-linear", modules_to_save=["head"])) == [
        f"layers.{i}.{p}" for i in range(3) for p in "qv"
    ]


def test_matching_is_pure_and_stable_after_attach() -> None:
    model = Blocks()
    before = copy.deepcopy(model)
    config = LoraConfig(targets=["q"])
    names = match_targets(model, config)
    assert str(model) == str(before), "matching changes nothing"
    attach(model, config)
    assert match_targets(model, config) == names, "names are the original paths, also once wrapped"


def test_nothing_matched_lists_the_eligible_layers() -> None:
    with pytest.raises(ValueError) as info:
        match_targets(Blocks(), LoraConfig(targets=["query"]))
    message = str(info.value)
    assert "matched no layer" in message
    assert "layers.0.q (Linear)" in message and "head (Linear)" in message
    assert "norm" not in message, "only layers LoRA can wrap are offered"


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("layers.0.norm", ["'layers.0.norm'", "LayerNorm", "no LoRA form"]),
        ("rnn", ["'rnn'", "LSTMCell"]),
    ],
)
def test_unsupported_target_is_named_never_skipped(target: str, words: list[str]) -> None:
    model = Blocks()
    with pytest.raises(ValueError) as info:
        attach(model, LoraConfig(targets=["q", target]))
    for word in words:
        assert word in str(info.value)
    assert not any("lora" in n for n, _ in model.named_parameters()), "the model is left as it was"
    preview = preview_targets(model, LoraConfig(targets=["q", target]))
    assert preview.matched == [f"layers.{i}.q" for i in range(3)] and list(preview.problems) == [target]


def test_attention_out_projection_is_adapted_through_its_parent() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="belongs to a MultiheadAttention"):
        match_targets(model, LoraConfig(targets=["out_proj"]))
    assert match_targets(model, LoraConfig(targets=["0"])) == ["0"]
    with pytest.raises(ValueError, match="matched no layer"):
        match_targets(model, LoraConfig(targets="all-linear"))  # the projection is not a free Linear


def test_all_linear_leaves_the_output_head_alone() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    names = match_targets(model, LoraConfig(targets="all-linear"))
    assert "lm_head" not in names
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                     "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
