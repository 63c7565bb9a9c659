"""A model change: one rule for what it keeps and re-derives (app/state/model_change.py), Start
blocked with its reason while nothing can train, the notice with Undo, and the tree's filter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from studio_window import LOAD_TIMEOUT_MS, isolated_settings, open_digits_window

from lora_studio.app.main_window import MainWindow
from lora_studio.app.state.model_change import carry_over, data_problem, defaults_for, run_name_for
from lora_studio.app.state.session import NO_MODEL, model_facts
from lora_studio.core import DataConfig, ModelConfig, load_model, preview_targets

RESNET18 = ModelConfig(source="torchvision", name="resnet18", weights="random")  # offline: no download
TEXT_DEMO = ModelConfig(source="demo", name="text")
DIGITS_DEMO = ModelConfig(source="demo", name="digits")


def _facts(model: ModelConfig):
    meta = load_model(model, meta=True)
    return model_facts(meta.model, meta.head, meta.task)


def _load(qtbot, window: MainWindow, model: ModelConfig) -> None:
    with qtbot.waitSignal(window.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        window.model_panel.load(model)


def _image_folder(root: Path) -> Path:
    """Two classes of tiny RGB images: enough for resnet18's data to be 'set'."""
    from PIL import Image

    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), colour).save(root / label / f"{i}.png")
    return root


def _targets_exist(window: MainWindow) -> list[str]:
    session = window.session
    preview = preview_targets(session.loaded.model, session.training_lora())
    assert preview.error is None and preview.matched, preview.error
    names = {name for name, _ in session.loaded.model.named_modules()}
    assert set(preview.matched) <= names
    return preview.matched


# -- the rule, as a pure function -------------------------------------------------------------------
def test_run_names_follow_the_model() -> None:
    assert run_name_for(DIGITS_DEMO) == "digits"
    assert run_name_for(RESNET18) == "resnet18"
    assert run_name_for(ModelConfig(source="transformers", name="org/tiny-gpt2", task="causal-lm")) == "tiny-gpt2"
    # A local folder named "model" is named after its parent (the hub snapshot layout).
    assert run_name_for(ModelConfig(source="transformers", name="/x/all_minilm/model", task="causal-lm")) == \
        "all_minilm"
    assert run_name_for(ModelConfig(source="python", name="/a/b/my_net.py:build")) == "my_net"
    assert Path(defaults_for(RESNET18).output.dir).name == "resnet18"
    assert not defaults_for(RESNET18).output.dir.startswith("runs")  # never the working folder


def test_a_demo_fresh_takes_its_whole_config_and_hand_set_values_carry_over() -> None:
    digits = defaults_for(DIGITS_DEMO, _facts(DIGITS_DEMO))
    text_facts = _facts(TEXT_DEMO)
    text = defaults_for(TEXT_DEMO, text_facts)
    untouched = carry_over(digits, digits, ["conv1", "conv2", "fc1"], text, text_facts)
    assert untouched.config == text and untouched.notices == []  # nothing was the user's: the demo's own

    edited = digits.replace(lora=digits.lora.replace(r=16, dropout=0.1, targets=["conv1"]),
                            training=dataclasses.replace(digits.training, max_steps=77))
    change = carry_over(edited, digits, ["conv1"], text, text_facts)
    lora = change.config.lora
    assert (lora.r, lora.dropout) == (16, 0.1)  # set by hand: kept
    assert lora.alpha == text.lora.alpha  # still the digits demo's: the text demo's now
    assert change.config.training.max_steps == 77 and change.config.training.lr == text.training.lr
    assert lora.targets == ["query", "value"] and change.config.data == text.data
    assert len(change.notices) == 1 and "conv1" in change.notices[0]  # the hand-picked target is named


def test_samples_follow_the_hand_set_rule_and_prompts_only_reach_a_language_model() -> None:
    story_model = ModelConfig(source="demo", name="story")
    digits_facts, story_facts = _facts(DIGITS_DEMO), _facts(story_model)
    digits, story = defaults_for(DIGITS_DEMO, digits_facts), defaults_for(story_model, story_facts)
    assert story.samples.prompts  # the demo comes with prompts: they must survive the change to it
    assert carry_over(digits, digits, ["conv1", "conv2", "fc1"], story, story_facts).config.samples == story.samples

    mine = ["Th' ship sailed"]
    edited = story.replace(samples=dataclasses.replace(story.samples, prompts=mine, max_new_tokens=12))
    to_digits = carry_over(edited, story, [], digits, digits_facts)
    assert to_digits.config.samples.prompts == [] and to_digits.config.samples.max_new_tokens == 12
    assert any("samples prompts dropped" in n for n in to_digits.notices)
    back = carry_over(edited, story, [], story, story_facts)  # the same kind of model: the prompts stay
    assert back.config.samples.prompts == mine


def test_per_layer_ranks_carry_over_only_for_layers_the_new_model_has() -> None:
    old = defaults_for(RESNET18, _facts(RESNET18))
    edited = old.replace(lora=old.lora.replace(rank_pattern={"layer4.0.conv1": 32, "fc1": 2}))
    resnet34 = ModelConfig(source="torchvision", name="resnet34", weights="random")
    facts = _facts(resnet34)
    change = carry_over(edited, old, [], defaults_for(resnet34, facts), facts)
    assert change.config.lora.rank_pattern == {"layer4.0.conv1": 32}
    assert any("fc1" in notice for notice in change.notices)


def _four_bit_llama(folder: Path) -> ModelConfig:
    """A tiny Llama config saved as a *-bnb-4bit checkpoint's (no weights: the window browses it on meta)."""
    import json
    import shutil

    from transformers import LlamaConfig

    from lora_studio.core.models.demo_models import story_folder

    folder.mkdir()
    config = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2).to_dict()
    config.update(architectures=["LlamaForCausalLM"],
                  quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(story_folder() / name, folder / name)
    return ModelConfig(source="transformers", name=str(folder), task="causal-lm")


def test_a_4bit_checkpoint_comes_with_qlora_and_a_hand_set_variant_gives_way_with_a_notice(tmp_path) -> None:
    four_bit = _four_bit_llama(tmp_path / "tiny-bnb-4bit")
    facts = _facts(four_bit)
    assert facts.four_bit and not _facts(TEXT_DEMO).four_bit
    assert defaults_for(four_bit, facts).lora.variant == "qlora"
    old = defaults_for(TEXT_DEMO, _facts(TEXT_DEMO))
    edited = old.replace(lora=old.lora.replace(variant="dora"))
    change = carry_over(edited, old, [], defaults_for(four_bit, facts), facts)
    assert change.config.lora.variant == "qlora"
    assert any("variant dora cannot adapt" in n and "4-bit" in n and "QLoRA" in n for n in change.notices)


def test_data_must_fit_the_model_and_the_message_names_the_fix() -> None:
    assert data_problem(DataConfig(kind="digits"), DIGITS_DEMO, "image-classification") is None
    problem = data_problem(DataConfig(kind="digits"), RESNET18, "image-classification")
    assert problem is not None and "resnet18" in problem and "image folder" in problem and "Data tab" in problem


# -- in the window ------------------------------------------------------------------------------------
def test_start_is_disabled_without_a_model_and_says_why(qtbot, tmp_path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.session.is_valid() and window.session.config_error == NO_MODEL
    start = window.run_panel.start_button
    assert not start.isEnabled() and start.toolTip() == NO_MODEL
    assert not window.session.config.output.dir.startswith("runs")  # never the working folder


def test_each_model_change_gives_a_valid_config_for_the_new_model(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    session = window.session
    assert session.is_valid() and session.config_error is None
    window.settings_panel.row("lora.r").set_text("16")  # by hand: carries over everywhere
    assert session.config.lora.r == 16

    _load(qtbot, window, TEXT_DEMO)  # MiniLM
    assert session.is_valid() and session.config_error is None
    assert session.config.data.kind == "text-classification" and session.config.lora.targets == ["query", "value"]
    assert session.config.lora.r == 16 and Path(session.config.output.dir).name == "text"
    _targets_exist(window)
    window.layer_tree.filter_edit.setText("attention")  # matches MiniLM only

    _load(qtbot, window, RESNET18)
    assert window.layer_tree.filter_edit.text() == ""  # a filter matching nothing here is cleared
    assert not session.is_valid() and "No training data for resnet18" in session.config_error
    assert window.run_panel.start_button.toolTip() == session.config_error  # Start says why, no raw error
    assert all(name.startswith("layer4.") for name in _targets_exist(window))
    assert session.config.lora.r == 16 and Path(session.config.output.dir).name == "resnet18"
    assert window.data_panel.choose_path(str(_image_folder(tmp_path / "images"))) is None
    assert session.is_valid() and session.config_error is None and session.config.data.kind == "image-folder"

    _load(qtbot, window, DIGITS_DEMO)
    assert session.is_valid() and session.config_error is None
    assert session.config.data.kind == "digits" and session.config.lora.targets == ["conv1", "conv2", "fc1"]
    assert session.config.lora.r == 16 and Path(session.config.output.dir).name == "digits"
    _targets_exist(window)


def test_a_hand_setting_that_cannot_carry_over_is_named_and_undo_restores_it(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    session, bar = window.session, window.model_panel.notice_bar
    window.layer_tree.set_ticked(["conv2"])  # by hand, and resnet18 has no layer named conv2
    window.settings_panel.row("lora.alpha").set_text("3")
    before = session.config
    _load(qtbot, window, RESNET18)
    assert bar.isVisibleTo(window) and "conv2" in bar.text() and "resnet18" in bar.text()
    assert session.config.lora.alpha == 3  # what can carry over, did

    with qtbot.waitSignal(session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS):
        bar.action_button.click()  # Undo
    assert session.config == before and session.config.model == DIGITS_DEMO
    assert not bar.isVisibleTo(window) and session.is_valid()


@pytest.mark.parametrize("field, value", [("lora.r", "12"), ("lora.alpha", "24")])
def test_rank_and_alpha_survive_a_model_change(qtbot, tmp_path, field, value) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.settings_panel.row(field).set_text(value)
    _load(qtbot, window, RESNET18)
    section, name = field.split(".")
    assert getattr(getattr(window.session.config, section), name) == float(value)
