"""The instruction-tuning demo: offline on a CPU, a few dozen steps teach the story GPT-2 the chat's
format, and its loss on held-out conversations (the assistant's answers only) drops."""

from __future__ import annotations

import json

import pytest

from lora_studio.core import DEMOS, GenerationSettings, RunConfig, demo_config, generate_text, load_trained_run
from lora_studio.core.demo import CHAT_PROMPTS, CHAT_QUESTIONS, run_demo
from lora_studio.core.disk.resource_files import demo_file

DROP = 2.0  # the held-out loss must fall at least this many times (measured: about 3.5x after 40 steps)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_chat_demo_data_is_conversations_with_a_system_turn() -> None:
    assert "chat" in DEMOS
    rows = [json.loads(line) for line in demo_file("chat.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = [json.loads(line) for line in demo_file("chat_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(pairs) >= 200
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    assert len({r["messages"][1]["content"] for r in rows}) == len(rows)  # distinct: held-out ones are new
    # the pairs are the conversations in chatml: prompt = system + user turns + the assistant's header
    first, pair = rows[0]["messages"], pairs[0]
    assert pair["prompt"] == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in first[:2]) \
        + "<|im_start|>assistant\n"
    assert pair["response"] == first[2]["content"] + "<|im_end|>\n"
    asked = {r["messages"][1]["content"] for r in rows}
    assert not asked & set(CHAT_QUESTIONS)  # the samples' questions are none of the training ones
    config = demo_config("chat", output_dir="unused")
    assert config.data.packing and config.data.prompt_column == "prompt"
    assert RunConfig.from_toml(config.to_toml()) == config


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
