"""Models and inputs for the Try tab's tests (imported by test_try_runner.py and test_try_panel.py):
the digits demo, the MiniLM text demo and the story demo (a causal LM), each with a small adapter
attached and nudged so the adapted model answers differently from its base.  Offline, built from
the packaged demos; and the check that the nudge does change the answers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from lora_studio.core import DEMO_NAMES, LoadedModel, LoraConfig, ModelConfig, attach, load_model, predict

TEXTS = ["the match went to extra time", "shares fell after the report", "a new phone with a bigger screen",
         "the band played their last concert"]


def nudged(loaded: LoadedModel, targets: list[str] | str, *, scale: float = 0.5, seed: int = 0) -> LoadedModel:
    """``loaded`` with a rank-4 adapter on ``targets`` whose B matrices are random (a fresh adapter's
    are zero, and would answer exactly as the base does)."""
    attach(loaded.model, LoraConfig(r=4, alpha=8, targets=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    loaded.model.eval()
    return loaded


@functools.cache
def _demo(name: str) -> LoadedModel:
    targets = {"digits": ["conv1", "conv2", "fc1"], "text": ["query", "value"], "story": "all-linear"}[name]
    return nudged(load_model(ModelConfig(source="demo", name=name)), targets, scale=0.5 if name != "story" else 0.2)


def digits_model() -> LoadedModel:
    """The digits CNN with a nudged adapter (shared by the tests of a session: predicting does not change it)."""
    return _demo("digits")


def text_model() -> LoadedModel:
    """The MiniLM text demo (four topics) with a nudged adapter on query and value."""
    return _demo("text")


def story_model() -> LoadedModel:
    """The story demo (a small GPT-2 with its tokenizer) with a nudged adapter on every linear layer."""
    if "story" not in DEMO_NAMES:
        pytest.skip("the story demo (a causal LM) is not in this checkout")
    return _demo("story")


def digit_images(folder: Path, digits: str = "0123456789") -> list[str]:
    """One 28×28 PNG per character of ``digits``: dark ink on white, as a user's picture would be."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, digit in enumerate(digits):
        image = Image.new("L", (28, 28), 255)
        ImageDraw.Draw(image).text((9, 6), digit, fill=0)
        path = folder / f"digit_{i}_{digit}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def test_the_nudged_adapters_answer_differently_from_their_base(tmp_path) -> None:
    for loaded, inputs in ((digits_model(), digit_images(tmp_path)), (text_model(), TEXTS)):
        found = predict(loaded, inputs, top_k=3)
        gaps = [abs(p.adapted[0].probability - next(s.probability for s in p.base if s.label == p.adapted[0].label))
                if any(s.label == p.adapted[0].label for s in p.base) else 1.0 for p in found]
        assert max(gaps) > 1e-3, "the adapter was not nudged: base and adapted agree"
