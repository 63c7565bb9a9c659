"""Causal language modelling from plain text or JSONL, with prompt masking and packing.

* ``.txt`` — one example per paragraph (blank-line separated).
* ``.jsonl`` — a ``text`` column, or a prompt and a response column: the prompt's
  tokens are masked out of the loss (label ``-100``), so the model learns to answer,
  not to repeat questions.
* packing joins every example (each ending in the end-of-text token) into blocks of
  exactly ``max_length`` tokens: no padding, every token trains.

The file is read lazily: one pass checks every row (an empty cell is named) and notes where
each example starts (:class:`.table_files.RowTable`, or a paragraph index for ``.txt``);
without packing an example is read and tokenised when it is asked for.  Packing needs the
token count of the whole file, so it tokenises once into compact arrays (4 bytes a token
and 1 for its loss mask), never into Python lists.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .collate import IGNORE_INDEX
from .errors import DataError, require_file
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


def has_target(labels: list[int]) -> bool:
    """True when an example has a next-token target the loss takes (a label after the first position)."""
    return any(t != IGNORE_INDEX for t in labels[1:])


class CausalLMDataset(Dataset):
    """Examples ``{"input_ids": [...], "labels": [...]}``; labels are -100 where no loss is taken.

    Without packing an example whose prompt fills ``max_length`` has no target and adds nothing to
    the loss (the loss is summed over targets); a file where no example has one is refused.
    """

    def __init__(self, path: str | Path, tokenizer: Any, *, text_column: str = "text", prompt_column: str | None = None,
                 response_column: str | None = None, max_length: int = 128, packing: bool = False) -> None:
        path = require_file(path)
        self.path, self.tokenizer, self.max_length, self.packing = path, tokenizer, max_length, packing
        self.pairs = prompt_response_pairs(path, text_column, prompt_column, response_column)
        self.ids = array("i")
        self.learn = bytearray()
        if packing:
            self._pack()
        elif not any(has_target(self[i]["labels"]) for i in range(len(self.pairs))):  # stops at the first found
            raise DataError(f"{path}: no example has a token to learn (prompts longer than max_length?)")

    def _pack(self) -> None:
        """Tokenise every example once into ``ids`` (and ``learn``: 1 where the loss takes the token)."""
        for prompt, response in self.pairs:
            ids, prompt_len = encode_pair(self.tokenizer, prompt, response)
            self.ids.extend(ids)
            self.learn.extend(b"\x00" * prompt_len + b"\x01" * (len(ids) - prompt_len))
        self.blocks = len(self.ids) // self.max_length
        if self.blocks == 0:
            raise DataError(f"{self.path} holds {len(self.ids)} tokens, fewer than one packed block of "
                            f"{self.max_length}; lower data.max_length or turn packing off")
        # A packed block has a target unless every token after its first is a prompt's.
        self.kept = array("q", [b for b in range(self.blocks) if self._learn_in(b)])
        if not self.kept:
            raise DataError(f"{self.path}: no example has a token to learn (prompts longer than max_length?)")

    def _learn_in(self, block: int) -> bool:
        start = block * self.max_length
        return any(self.learn[start + 1:start + self.max_length])

    def __len__(self) -> int:
        return len(self.kept) if self.packing else len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.packing:
            start = self.kept[index] * self.max_length
            ids = self.ids[start:start + self.max_length].tolist()
            learn = self.learn[start:start + self.max_length]
            return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, learn)]}
        ids, prompt_len = encode_pair(self.tokenizer, *self.pairs[index])
        labels = [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        return {"input_ids": ids[:self.max_length], "labels": labels[:self.max_length]}
