"""The digits demo's data: scikit-learn's 8×8 digits (shipped in resources/), optionally shifted.

The shift is the new domain the adapter must learn: ``rotate`` turns every image a
quarter turn, ``mirror`` flips it left to right, ``invert`` swaps ink and paper.  The
pretrained base never saw any of them; ``rotate`` and ``mirror`` are the two domains of the
multi-domain example (one adapter each, switched or combined on one base).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..disk.resource_files import demo_file
from ..disk.safe_loading import load_safetensors

DIGITS_DATA = "digits.safetensors"
DIGIT_NAMES = [str(i) for i in range(10)]


def load_digits_tensors(shift: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]) with ``shift`` applied."""
    data = load_safetensors(demo_file(DIGITS_DATA))
    images = data["images"].float().div(16.0).unsqueeze(1)
    if shift == "rotate":
        images = torch.rot90(images, k=1, dims=(2, 3))
    elif shift == "mirror":
        images = torch.flip(images, dims=(3,))  # left-right: the last axis is the image's width
    elif shift == "invert":
        images = 1.0 - images
    elif shift != "none":
        raise ValueError(f"data.shift must be none, rotate, mirror or invert, got {shift!r}")
    return images.contiguous(), data["labels"]


def digits_split(n: int, validation_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train indices, validation indices); the same split the shipped checkpoint was trained on."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - int(round(n * validation_fraction))
    return order[:cut], order[cut:]


class TensorExamples(Dataset):
    """Examples ``{"pixel_values": x[i], "labels": y[i]}`` from two tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"pixel_values": self.images[index], "labels": int(self.labels[index])}
