"""Causal language modelling from plain text or JSONL, with prompt masking and packing.

* ``.txt`` — one example per paragraph (blank-line separated).
* ``.jsonl`` — a ``text`` column, or a prompt and a response column: the prompt's
  tokens are masked out of the loss (label ``-100``), so the model learns to answer,
  not to repeat questions.
* packing joins every example (each ending in the end-of-text token) into blocks of
  exactly ``max_length`` tokens: no padding, every token trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .collate import IGNORE_INDEX
from .errors import DataError, require_file
from .table_files import column, is_empty, read_rows, refuse_empty_cells


def prompt_response_pairs(path: Path, text_column: str, prompt_column: str | None, response_column: str | None,
                          *, drop_empty: bool = False) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a causal-LM file: a .txt file's paragraphs (prompt empty), or a table's columns.

    A table row with an empty cell is refused naming it; with ``drop_empty`` (the window's
    preview, which lists those rows itself) it is left out instead.
    """
    if path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        if not paragraphs:
            raise DataError(f"data file {path} is empty")
        return [("", p) for p in paragraphs]
    rows = read_rows(path)
    if prompt_column:
        pairs = list(zip(map(str, column(rows, prompt_column, path)), map(str, column(rows, response_column, path))))
        columns = [prompt_column, response_column]
    else:
        pairs = [("", str(t)) for t in column(rows, text_column, path)]
        columns = [text_column]
    if drop_empty:
        return [p for p in pairs if not any(is_empty(c) for c in (p if prompt_column else p[1:]))]
    refuse_empty_cells(rows, columns, path)
    return pairs


class CausalLMDataset(Dataset):
    """Examples ``{"input_ids": [...], "labels": [...]}``; labels are -100 where no loss is taken."""

    def __init__(self, path: str | Path, tokenizer: Any, *, text_column: str = "text", prompt_column: str | None = None,
                 response_column: str | None = None, max_length: int = 128, packing: bool = False) -> None:
        path = require_file(path)
        eos = tokenizer.eos_token_id
        examples = []
        for prompt, response in prompt_response_pairs(path, text_column, prompt_column, response_column):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            ids = prompt_ids + response_ids + ([eos] if eos is not None else [])
            labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]
            examples.append((ids, labels))
        if packing:
            flat_ids = [t for ids, _ in examples for t in ids]
            flat_labels = [t for _, labels in examples for t in labels]
            blocks = len(flat_ids) // max_length
            if blocks == 0:
                raise DataError(f"{path} holds {len(flat_ids)} tokens, fewer than one packed block of "
                                f"{max_length}; lower data.max_length or turn packing off")
            self.examples = [
                {"input_ids": flat_ids[i * max_length:(i + 1) * max_length],
                 "labels": flat_labels[i * max_length:(i + 1) * max_length]}
                for i in range(blocks)
            ]
        else:
            self.examples = [{"input_ids": ids[:max_length], "labels": labels[:max_length]} for ids, labels in examples]
        kept = [e for e in self.examples if any(t != IGNORE_INDEX for t in e["labels"][1:])]
        if not kept:
            raise DataError(f"{path}: no example has a token to learn (prompts longer than max_length?)")
        self.examples = kept

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]
