"""Causal language modelling from plain text or JSONL, with prompt masking and packing.

* ``.txt`` — one example per paragraph (blank-line separated).
* ``.jsonl`` — a ``text`` column, or a prompt and a response column: the prompt's
  tokens are masked out of the loss (label ``-100``), so the model learns to answer,
  not to repeat questions.
* packing (:class:`.packing.PackedDataset`) puts whole examples (each ending in the end-of-text
  token) side by side in rows of at most ``max_length`` tokens, with positions restarting at 0
  and a block-diagonal attention mask: little padding, and no token attends across examples, so
  each example trains exactly as it would alone.  (Before issue 17 packing cut one token stream
  into blocks of exactly ``max_length``, attention crossing examples and examples split.)
* an example longer than ``max_length`` is cut to it; how many were cut is counted
  (``truncated`` of ``counted``) and a run warns about it.

The file is read lazily: one pass checks every row (an empty cell is named) and notes where
each example starts (:class:`.table_files.RowTable`, or a paragraph index for ``.txt``);
without packing an example is read and tokenised when it is asked for (the truncation count
looks at the first :data:`COUNTED_EXAMPLES` examples, so a huge file still starts quickly).
Packing needs the length of every example, so it tokenises once into compact arrays.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .collate import IGNORE_INDEX
from .errors import DataError, require_file
from .packing import PackedDataset
from .table_files import RowTable, cell, decode_line, empty_cells_of, refuse_found_empty, require_columns


class Paragraphs:
    """The paragraphs (blank-line separated, stripped) of a UTF-8 text file, by byte offsets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.starts, self.ends = array("q"), array("q")
        position, start, number = 0, None, 0
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                decode_line(raw, path, f"line {number}")  # refuse non-UTF-8 now, naming the line
                if raw.strip():
                    if start is None:
                        start = position
                elif start is not None:
                    self.starts.append(start)
                    self.ends.append(position)
                    start = None
                position += len(raw)
        if start is not None:
            self.starts.append(start)
            self.ends.append(position)
        if not self.starts:
            raise DataError(f"data file {path} is empty")

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> str:
        with self.path.open("rb") as f:
            f.seek(self.starts[index])
            return f.read(self.ends[index] - self.starts[index]).decode("utf-8").strip()


class PromptResponses:
    """(prompt, response) pairs of a causal-LM file, each read when asked for: a .txt file's paragraphs
    (prompt empty), or a table's columns.

    Built with one pass that names every row with an empty cell (refused; with ``drop_empty``,
    the window's preview, which lists those rows itself, they are left out instead).
    """

    def __init__(self, path: Path, text_column: str, prompt_column: str | None, response_column: str | None,
                 *, drop_empty: bool = False) -> None:
        self.path, self.prompt_column = path, prompt_column
        self.columns = [prompt_column, response_column] if prompt_column else [text_column]
        self.paragraphs: Paragraphs | None = None
        self.table: RowTable | None = None
        self.rows: array | None = None  # with drop_empty: the rows kept
        if path.suffix.lower() == ".txt":
            self.paragraphs = Paragraphs(path)
            return
        self.table = RowTable(path)
        require_columns(self.table, [c for c in self.columns if c])
        empty: list[tuple[int, str]] = []
        kept = array("q")
        for number, row in enumerate(self.table.iter_rows(), start=1):
            for name in self.columns:
                cell(row, name, number, path)
            found = empty_cells_of(row, self.columns)
            empty += [(number, name) for name in found]
            if not found:
                kept.append(number - 1)
        if drop_empty:
            self.rows = kept
        else:
            refuse_found_empty(empty, path)

    def __len__(self) -> int:
        if self.paragraphs is not None:
            return len(self.paragraphs)
        return len(self.rows) if self.rows is not None else len(self.table)

    def __getitem__(self, index: int) -> tuple[str, str]:
        if self.paragraphs is not None:
            return "", self.paragraphs[index]
        row = self.table.row(self.rows[index] if self.rows is not None else index)
        if self.prompt_column:
            return str(row[self.columns[0]]), str(row[self.columns[1]])
        return "", str(row[self.columns[0]])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for index in range(len(self)):
            yield self[index]


def prompt_response_pairs(path: Path, text_column: str, prompt_column: str | None, response_column: str | None,
                          *, drop_empty: bool = False) -> PromptResponses:
    """(prompt, response) pairs of a causal-LM file, read lazily (see :class:`PromptResponses`)."""
    return PromptResponses(path, text_column, prompt_column, response_column, drop_empty=drop_empty)


def encode_pair(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """(token ids of prompt + response + end-of-text, how many of them are the prompt's)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(prompt_ids) + list(response_ids) + ([eos] if eos is not None else []), len(prompt_ids)


COUNTED_EXAMPLES = 20_000  # without packing, the truncation count reads at most this many examples first


def has_target(labels: list[int]) -> bool:
    """True when an example has a next-token target the loss takes (a label after the first position)."""
    return any(t != IGNORE_INDEX for t in labels[1:])


class CausalLMDataset(Dataset):
    """Examples ``{"input_ids": [...], "labels": [...]}``; labels are -100 where no loss is taken.

    Without packing an example whose prompt fills ``max_length`` has no target and adds nothing to
    the loss (the loss is summed over targets); a file where no example has one is refused.  With
    packing the items are :class:`.packing.PackedDataset` rows (with ``position_ids``).
    ``truncated`` examples of the ``counted`` first ones are longer than ``max_length`` (cut).
    """

    def __init__(self, path: str | Path, tokenizer: Any, *, text_column: str = "text", prompt_column: str | None = None,
                 response_column: str | None = None, max_length: int = 128, packing: bool = False) -> None:
        path = require_file(path)
        self.path, self.tokenizer, self.max_length, self.packing = path, tokenizer, max_length, packing
        self.pairs = prompt_response_pairs(path, text_column, prompt_column, response_column)
        self.packed: PackedDataset | None = None
        if packing:
            self.packed = PackedDataset(self._full_examples(), max_length, source=str(path))
            self.truncated, self.counted = self.packed.truncated, self.packed.counted
            return
        self.truncated, self.counted, learns = 0, 0, False
        self.total = len(self.pairs)
        for index in range(min(len(self.pairs), COUNTED_EXAMPLES)):
            example = self._full_example(index)
            self.counted += 1
            self.truncated += len(example["input_ids"]) > max_length
            learns = learns or has_target(example["labels"][:max_length])
        index = self.counted
        while not learns and index < len(self.pairs):  # past the counted ones: stop at the first found
            learns = has_target(self[index]["labels"])
            index += 1
        if not learns:
            raise DataError(f"{path}: no example has a token to learn (prompts longer than max_length?)")

    def _full_example(self, index: int) -> dict[str, list[int]]:
        ids, prompt_len = encode_pair(self.tokenizer, *self.pairs[index])
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]}

    def _full_examples(self) -> Iterator[dict[str, list[int]]]:
        for index in range(len(self.pairs)):
            yield self._full_example(index)

    def __len__(self) -> int:
        return len(self.packed) if self.packed is not None else len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.packed is not None:
            return self.packed[index]
        example = self._full_example(index)
        return {"input_ids": example["input_ids"][:self.max_length], "labels": example["labels"][:self.max_length]}
