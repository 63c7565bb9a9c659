"""Seeded train/validation splits and sample caps."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from .errors import DataError


def split_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, validation): a seeded random ``fraction`` held out; (dataset, None) when fraction is 0."""
    n = len(dataset)
    if fraction <= 0:
        return dataset, None
    held = int(round(n * fraction))
    if held < 1 or held >= n:
        raise DataError(f"data.validation_split {fraction} of {n} examples leaves an empty side; "
                        "use more data or another fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[held:]), Subset(dataset, order[:held])


def first(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` examples (all when None)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))
