"""Padding-free packing of causal-LM examples, with attention kept inside each example.

The packing rule (sequential, next-fit): examples are taken in order and appended to the
current block while they fit in ``block`` tokens; the next one that does not fit starts a new
block.  An example is never split across blocks; one longer than a block is cut to the block
(and counted in :attr:`PackedDataset.truncated`).  Order is kept, so a run's data order and
its validation split stay reproducible.

Each packed row carries ``position_ids`` that restart at 0 for every example, and the first
label of every example is masked (-100): the token before it belongs to another example, so
predicting it would be a target the unpacked example never had.  :func:`.collate.make_collate`
turns the positions into a 4D block-diagonal causal mask, so no token attends across examples
and a packed batch scores exactly the loss of the same examples unpacked.

Tokens are kept in compact arrays (4 bytes a token for ids, 4 for labels), never in Python lists.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

from torch.utils.data import Dataset

from .collate import IGNORE_INDEX
from .errors import DataError


class PackedDataset(Dataset):
    """Rows ``{"input_ids", "labels", "position_ids"}`` of at most ``block`` tokens, each holding
    whole examples (see the module's packing rule).

    ``examples``: a dataset (or any iterable) of ``{"input_ids": list[int], "labels": list[int]}``;
    read once.  A row without a token to learn is left out; no row at all is refused.
    """

    def __init__(self, examples: Iterable[dict[str, Any]] | Dataset, block: int, *, source: str = "the data") -> None:
        if not isinstance(block, int) or block < 2:
            raise ValueError(f"a packed block holds at least 2 tokens, not {block!r}")
        self.block, self.source = block, source
        self.ids, self.labels = array("i"), array("i")
        self.starts = array("q")  # token offset where each example starts; one extra entry at the end
        self.row_starts = array("q")  # index into ``starts`` of each row's first example
        self.examples = 0
        self.truncated = 0  # examples longer than a block, cut to it
        self.longest = 0  # tokens of the longest example before cutting
        used = block  # tokens in the current row (a full one forces a new row first)
        for example in _each(examples):
            ids, labels = example["input_ids"], example["labels"]
            if len(ids) != len(labels):
                raise DataError(f"{source}: an example has {len(ids)} tokens but {len(labels)} labels")
            if not ids:
                continue
            self.longest = max(self.longest, len(ids))
            if len(ids) > block:
                ids, labels = ids[:block], labels[:block]
                self.truncated += 1
            if used + len(ids) > block:
                self.row_starts.append(len(self.starts))
                used = 0
            self.starts.append(len(self.ids))
            self.ids.extend(ids)
            self.labels.extend(labels)
            self.labels[self.starts[-1]] = IGNORE_INDEX  # nothing before it in its example predicts it
            used += len(ids)
            self.examples += 1
        self.starts.append(len(self.ids))
        self.row_starts.append(len(self.starts) - 1)
        self.kept = array("q", [r for r in range(len(self.row_starts) - 1) if self._learns(r)])
        if not self.kept:
            raise DataError(f"{source}: no example has a token to learn (prompts longer than max_length?)")
        self.counted = self.examples  # examples the truncation count covers (all of them)
        self.max_length = block

    def _token_range(self, row: int) -> tuple[int, int]:
        return self.starts[self.row_starts[row]], self.starts[self.row_starts[row + 1]]

    def _learns(self, row: int) -> bool:
        start, end = self._token_range(row)
        return any(t != IGNORE_INDEX for t in self.labels[start:end])

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.kept[index]
        start, end = self._token_range(row)
        positions: list[int] = []
        for e in range(self.row_starts[row], self.row_starts[row + 1]):
            positions.extend(range(self.starts[e + 1] - self.starts[e]))
        return {"input_ids": self.ids[start:end].tolist(), "labels": self.labels[start:end].tolist(),
                "position_ids": positions}

    @property
    def rows(self) -> int:
        """Packed rows (all, including any without a target)."""
        return len(self.row_starts) - 1

    @property
    def tokens(self) -> int:
        """Tokens over all rows (after cutting)."""
        return len(self.ids)


def _each(examples: Iterable[dict[str, Any]] | Dataset) -> Iterable[dict[str, Any]]:
    """Every example once: by index when the dataset has a length (a map-style Dataset), else iterated."""
    if hasattr(examples, "__len__") and hasattr(examples, "__getitem__"):
        return (examples[i] for i in range(len(examples)))
    return iter(examples)


def truncation_note(*datasets: Any) -> str | None:
    """The warning for examples cut at ``max_length`` in ``datasets`` (None when none was cut).

    A dataset reports cuts with ``truncated`` (examples cut), ``counted`` (examples looked at),
    ``max_length`` and optionally ``total`` (examples in all, when only the first were counted); wrappers (``Subset``, the first-N view) are looked through by their
    ``dataset`` attribute, and a dataset shared by the train and validation splits counts once.
    """
    seen: dict[int, Any] = {}
    for dataset in datasets:
        while dataset is not None and not hasattr(dataset, "truncated"):
            dataset = getattr(dataset, "dataset", None)
        if dataset is not None:
            seen[id(dataset)] = dataset
    cut = sum(int(d.truncated) for d in seen.values())
    if not cut:
        return None
    counted = sum(int(d.counted) for d in seen.values())
    total = sum(int(getattr(d, "total", d.counted)) for d in seen.values())
    length = max(int(d.max_length) for d in seen.values())
    of = f"{counted}" if total <= counted else f"the first {counted} (of {total})"
    return (f"{cut} of {of} examples are longer than data.max_length ({length} tokens) and were cut to it; "
            "raise data.max_length to train on their ends")
