"""The instruction-tuning demo: offline on a CPU, a few dozen steps teach the story GPT-2 the chat's
format, and its loss on held-out conversations (the assistant's answers only) drops."""

from __future__ import annotations

import json

import pytest

from lora_studio.core import DEMOS, GenerationSettings, RunConfig, demo_config, generate_text, load_trained_run
from lora_studio.core.data.chat_templates import CHATML
from lora_studio.core.demo import CHAT_PROMPTS, CHAT_QUESTIONS, CHAT_SYSTEM, run_demo
from lora_studio.core.models.demo_models import load_demo_model
from lora_studio.core.disk.resource_files import demo_file

DROP = 2.0  # the held-out loss must fall at least this many times (measured: about 3.5x after 40 steps)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_chat_demo_data_is_conversations_with_a_system_turn() -> None:
    assert "chat" in DEMOS
    rows = [json.loads(line) for line in demo_file("chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 200
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    assert len({r["messages"][1]["content"] for r in rows}) == len(rows)  # distinct: held-out ones are new
    assert all(r["messages"][0]["content"] == CHAT_SYSTEM for r in rows)
    asked = {r["messages"][1]["content"] for r in rows}
    assert not asked & set(CHAT_QUESTIONS)  # the samples' questions are none of the training ones
    config = demo_config("chat", output_dir="unused")
    assert config.data.packing and (config.data.format, config.data.chat_template) == ("messages", "chatml")
    assert all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n") for p in CHAT_PROMPTS)
    assert RunConfig.from_toml(config.to_toml()) == config
    # the samples' prompts are the conversations' own rendering: the chatml template's generation prompt
    tokenizer = load_demo_model("story").tokenizer
    tokenizer.chat_template = CHATML
    turns = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": CHAT_QUESTIONS[0]}]
    assert tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) == CHAT_PROMPTS[0]


def test_a_short_chat_demo_learns_the_format(tmp_path) -> None:
    outcome = run_demo("chat", output_dir=tmp_path / "run", steps=40)
    before, after = outcome["before"], outcome["after"]
    assert outcome["result"].status == "finished", outcome["result"].error
    assert after["loss"] < before["loss"] / DROP, (before["loss"], after["loss"])
    trained = load_trained_run(outcome["result"].run_dir)
    greedy = GenerationSettings(max_new_tokens=24, temperature=0.0)
    for prompt in CHAT_PROMPTS:
        texts = generate_text(trained, prompt, greedy)  # adapted, and the base (adapters disabled)
        assert texts["adapted"].startswith("Arr! "), texts  # the assistant's format, from the first token
        assert "matey" in texts["adapted"], texts
        assert "Arr" not in texts["base"], texts
