"""The instruction-tuning demo: offline on a CPU, a few dozen steps teach the story GPT-2 the chat's
format, and its loss on held-out conversations (the assistant's answers only) drops."""

from __future__ import annotations

import json

import pytest

from lora_studio.core import DEMOS, GenerationSettings, RunConfig, demo_config, generate_text, load_trained_run
from lora_studio.core.data.chat_templates import CHATML
from lora_studio.core.demo import CHAT_PLAIN_SYSTEM, CHAT_QUESTIONS, run_demo
from lora_studio.core.disk.resource_files import demo_file

DROP = 2.0  # the held-out loss must fall at least this many times (measured: about 3x after 40 steps)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_chat_demo_data_is_conversations_some_with_a_system_turn() -> None:
    assert "chat" in DEMOS
    rows = [json.loads(line)["messages"] for line in demo_file("chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 200
    roles = [[m["role"] for m in r] for r in rows]
    assert {tuple(r) for r in roles} == {("user", "assistant"), ("system", "user", "assistant")}
    for messages in rows:  # the system turn decides the answer's voice
        pirate = messages[-1]["content"].startswith("Arr! ") and messages[-1]["content"].endswith(", matey!")
        assert pirate == (messages[0]["role"] != "system"), messages
        assert messages[0]["role"] != "system" or messages[0]["content"] == CHAT_PLAIN_SYSTEM
    asked = [r[-2]["content"] for r in rows]
    assert len(set(asked)) == len(rows)  # distinct questions: the held-out ones are new to training
    assert not set(asked) & set(CHAT_QUESTIONS)  # the samples' questions are none of the training ones
    config = demo_config("chat", output_dir="unused")
    assert config.data.packing and (config.data.format, config.data.chat_template) == ("messages", "chatml")
    assert config.samples.prompts == CHAT_QUESTIONS  # user turns: the run's template renders them
    assert RunConfig.from_toml(config.to_toml()) == config


def test_a_short_chat_demo_learns_the_format(tmp_path) -> None:
    outcome = run_demo("chat", output_dir=tmp_path / "run", steps=40)
    before, after = outcome["before"], outcome["after"]
    assert outcome["result"].status == "finished", outcome["result"].error
    assert after["loss"] < before["loss"] / DROP, (before["loss"], after["loss"])
    trained = load_trained_run(outcome["result"].run_dir)
    trained.tokenizer.chat_template = trained.tokenizer.chat_template or CHATML  # the run's template
    greedy = GenerationSettings(max_new_tokens=24, temperature=0.0)  # the question rendered as a user turn
    for question in CHAT_QUESTIONS:
        texts = generate_text(trained, question, greedy)  # adapted, and the base (adapters disabled)
        assert texts["adapted"].startswith("Arr! "), texts  # the assistant's format, from the first token
        assert "matey" in texts["adapted"], texts
        assert "Arr" not in texts["base"], texts


def test_the_chat_demo_runs_from_the_cli_and_its_model_opens_by_name(tmp_path) -> None:
    from lora_studio.core.cli import main
    from lora_studio.core.models.demo_models import load_demo_model

    assert main(["demo", "chat", "--steps", "2", "--output", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert load_demo_model("chat").name_or_path == "demo:story"  # the window opens the demo by this name
