"""Recreate the demo files in resources/demo/ (deterministic: same bytes on every CPU run).

    .venv/bin/python resources/make_demo_files.py

* ``digits.safetensors`` — scikit-learn's 1,797 8×8 digit images (uint8, 0..16) and labels,
  so the digits demo needs neither scikit-learn nor a download at run time.
* ``digits_cnn.safetensors`` — :class:`DigitsNet` pretrained on the upright digits
  (the base the digits demo adapts to a shifted domain).
* ``sentences.csv`` — a small labelled set of short sentences in four topics for the
  text demo, composed from the templates below with a fixed seed.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_studio.core.data.digits import digits_split, load_digits_tensors
from lora_studio.core.models import DigitsNet

OUT = Path(__file__).resolve().parent / "demo"
SEED = 0


def make_digits_data() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.uint8)  # values 0..16
    labels = torch.tensor(digits.target, dtype=torch.int64)
    save_file({"images": images.contiguous(), "labels": labels}, str(OUT / "digits.safetensors"))


def make_digits_checkpoint(steps: int = 600) -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    images, labels = load_digits_tensors(shift="none")
    train_idx, val_idx = digits_split(len(labels))
    model = DigitsNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        batch = train_idx[torch.randint(len(train_idx), (64,), generator=g)]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (model(images[val_idx]).argmax(-1) == labels[val_idx]).float().mean().item()
    print(f"digits CNN: validation accuracy on upright digits {accuracy:.1%}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(OUT / "digits_cnn.safetensors"), metadata={"made_by": "resources/make_demo_files.py"})


TOPICS = {
    "sports": (
        ["The striker", "Our goalkeeper", "The home team", "The tennis champion", "The young sprinter",
         "The coach", "The cyclist", "The rugby squad"],
        ["scored twice in the final minutes", "won the championship after extra time",
         "trained hard before the match", "broke the national record on the track",
         "lost the semi-final on penalties", "signed a new contract with the club",
         "celebrated the victory with the fans", "was injured during the second half"],
    ),
    "weather": (
        ["Tomorrow morning", "This weekend", "Across the north", "Near the coast", "By the evening",
         "Later this week", "In the mountains", "Over the valley"],
        ["heavy rain is expected to fall", "temperatures will drop below freezing",
         "strong winds will bring storms", "the sky should stay sunny and clear",
         "thick fog will slow the traffic", "snow may cover the roads",
         "a warm front brings humid air", "thunder and lightning are likely"],
    ),
    "food": (
        ["My grandmother", "The chef", "This bakery", "Our neighbour", "The new restaurant",
         "My brother", "The street vendor", "The cookbook"],
        ["bakes fresh bread with butter every morning", "serves a spicy soup with noodles",
         "makes the best chocolate cake in town", "grills vegetables with garlic and olive oil",
         "cooks rice with saffron and chicken", "prepares a salad with tomatoes and cheese",
         "fries crispy potatoes with salt", "roasts a lamb with rosemary for dinner"],
    ),
    "technology": (
        ["The new phone", "This laptop", "The software update", "Our server", "The smart watch",
         "The graphics card", "The startup's app", "The operating system"],
        ["ships with a faster processor", "fixed a security bug in the browser",
         "crashed after installing the driver", "stores the files in the cloud",
         "runs the neural network on the chip", "supports wireless charging and bluetooth",
         "needs more memory to compile the code", "uploads the data over the network"],
    ),
}


def make_sentences() -> None:
    rng = random.Random(SEED)
    rows = []
    for label, (subjects, predicates) in TOPICS.items():
        pairs = [(s, p) for s in subjects for p in predicates]
        rng.shuffle(pairs)
        rows += [(f"{s} {p}.", label) for s, p in pairs[:48]]
    rng.shuffle(rows)
    with open(OUT / "sentences.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_digits_data()
    make_digits_checkpoint()
    make_sentences()
    print(f"wrote {', '.join(sorted(p.name for p in OUT.iterdir()))}")
