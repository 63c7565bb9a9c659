"""The story demo: its packaged GPT-2 and tokenizer load offline, know the stories' English, and a
short LoRA run teaches them the pirate voice of ``resources/demo/story/pirate.txt``."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lora_studio.core import (
    DEMO_NAMES,
    DEMOS,
    GenerationSettings,
    ModelConfig,
    RunConfig,
    demo_config,
    generate_text,
    load_trained_run,
)
from lora_studio.core.demo import STORY_PROMPTS, run_demo
from lora_studio.core.disk.resource_files import demo_file
from lora_studio.core.models.demo_models import load_demo_model, story_folder
from lora_studio.core.models.loading import infer_task

SIZE_BOUND = 4_000_000  # bytes: the whole resources/demo/story folder (model ~1.9 MB float16, text ~0.5 MB)
HELD_OUT = 60  # the last stories of stories.txt, kept out of pretraining (make_story_demo.HELD_OUT)
PIRATE = re.compile(r"th'|\bye\b|\byer\b|matey|\barr\b|\bwee\b|\ban'|\blass\b|\blad\b|mighty", re.IGNORECASE)
"""Words of the pirate voice: in the base corpus only inside an old pirate's quoted sayings (checked below)."""
QUOTED = re.compile(r'"[^"]*"?')  # a quotation, or one a generation left open


def narration(text: str) -> str:
    """``text`` without its quotations: the voice the story is told in."""
    return QUOTED.sub(" ", text)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the demo must need no hub, not even its cache
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def base():
    return load_demo_model("story")


def _stories(name: str) -> list[str]:
    return [p.strip() for p in demo_file(f"story/{name}").read_text(encoding="utf-8").split("\n\n") if p.strip()]


def test_story_is_a_demo_of_a_causal_lm() -> None:
    assert "story" in DEMOS and "story" in DEMO_NAMES
    assert infer_task(ModelConfig(source="demo", name="story")) == "causal-lm"
    config = demo_config("story", output_dir="unused")
    assert config.data.kind == "causal-lm" and config.samples.prompts
    assert config.training.eval_at_start
    assert RunConfig.from_toml(config.to_toml()) == config  # the window saves it as a project's RUN.toml


def test_story_package_is_small_and_public_domain() -> None:
    folder = story_folder()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert size < SIZE_BOUND, f"resources/demo/story holds {size} bytes"
    assert "CC0" in (folder / "README.md").read_text(encoding="utf-8")


def test_story_model_loads_offline(base) -> None:
    from transformers import PreTrainedTokenizerFast

    assert base.task == "causal-lm" and base.forward_style == "transformers"
    assert base.name_or_path == "demo:story"
    assert isinstance(base.tokenizer, PreTrainedTokenizerFast)
    assert sum(p.numel() for p in base.model.parameters()) < 2_000_000
    assert all(p.dtype == torch.float32 for p in base.model.parameters())
    meta = load_demo_model("story", meta=True)
    assert all(p.device.type == "meta" for p in meta.model.parameters())
    assert [n for n, _ in meta.model.named_parameters()] == [n for n, _ in base.model.named_parameters()]


def test_story_tokenizer_round_trips_text(base) -> None:
    tokenizer = base.tokenizer
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert not getattr(tokenizer, "chat_template", None)
    for text in (_stories("stories.txt")[0], _stories("pirate.txt")[0], "Zoë said: \"naïve 42%!\" — ok?\n"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer(_stories("stories.txt")[0])["input_ids"]) < len(_stories("stories.txt")[0]) / 3


def test_pirate_voice_is_new_to_the_base_corpus() -> None:
    """The base stories have the pirate's words only in quotes; every task story is told in them."""
    stories = _stories("stories.txt")
    assert not any(PIRATE.search(narration(story)) for story in stories)
    assert any(PIRATE.search(story) for story in stories)  # the old pirate's sayings: the words have tokens
    assert all(PIRATE.search(narration(story)) for story in _stories("pirate.txt"))


def test_base_model_knows_the_stories(base) -> None:
    """On held-out stories, far below the vocabulary size (what a model that learned nothing scores)."""
    tokenizer, model = base.tokenizer, base.model.eval()
    losses, counts = [], []
    with torch.no_grad():
        for story in _stories("stories.txt")[-HELD_OUT:]:
            ids = torch.tensor([tokenizer(story)["input_ids"] + [tokenizer.eos_token_id]])
            losses.append(model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1))
            counts.append(ids.shape[1] - 1)
    perplexity = math.exp(sum(losses) / sum(counts))
    assert perplexity < len(tokenizer) / 50, f"held-out perplexity {perplexity:.1f}, vocabulary {len(tokenizer)}"


def test_base_model_writes_the_stories_english(base) -> None:
    """Its greedy continuation of a story opening uses only words of the stories (no gibberish) and is
    no loop of one phrase."""
    known = set(re.findall(r"[A-Za-z']+", demo_file("story/stories.txt").read_text(encoding="utf-8")))
    text = generate_text(base, STORY_PROMPTS[0], GenerationSettings(max_new_tokens=48, temperature=0.0),
                         sides=("base",))["base"]
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) >= 20 and set(words) <= known, text
    assert len(set(words)) > len(words) / 2, text


def test_short_story_demo_teaches_the_pirate_voice(tmp_path) -> None:
    outcome = run_demo("story", output_dir=tmp_path / "run", steps=40)
    before, after = outcome["before"], outcome["after"]
    assert outcome["result"].status == "finished"
    assert after["perplexity"] < before["perplexity"] / 2, (before["perplexity"], after["perplexity"])
    trained = load_trained_run(outcome["result"].run_dir)
    greedy = GenerationSettings(max_new_tokens=32, temperature=0.0)
    for prompt in STORY_PROMPTS:
        texts = generate_text(trained, prompt, greedy)  # adapted, and the base (adapters disabled)
        assert PIRATE.search(narration(texts["adapted"])), texts
        assert not PIRATE.search(narration(texts["base"])), texts


def test_a_missing_story_file_names_the_script_that_makes_it() -> None:
    import pytest

    from lora_studio.core.disk.resource_files import demo_file

    with pytest.raises(FileNotFoundError, match="make_story_demo.py"):
        demo_file("story/no-such-file.json")
    with pytest.raises(FileNotFoundError, match="make_demo_files.py"):
        demo_file("no-such-file.csv")
