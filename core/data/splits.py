"""Seeded train/validation splits and sample caps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .errors import DataError


class IndexArray:
    """Row indices as one int64 array (8 bytes a row, not a Python int each), read as Python ints.

    A split of a file with millions of rows would otherwise hold two lists of boxed ints, more
    memory than the lazy dataset's whole index.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.array = np.ascontiguousarray(values, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, position: int) -> int:
        return int(self.array[position])

    def __iter__(self) -> Iterator[int]:
        return iter(self.array.tolist())


def split_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, validation): a seeded random ``fraction`` held out; (dataset, None) when fraction is 0."""
    n = len(dataset)
    if fraction <= 0:
        return dataset, None
    held = int(round(n * fraction))
    if held < 1 or held >= n:
        raise DataError(f"data.validation_split {fraction} of {n} examples leaves an empty side; "
                        "use more data or another fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return Subset(dataset, IndexArray(order[held:])), Subset(dataset, IndexArray(order[:held]))


def first(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` examples (all when None)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))
