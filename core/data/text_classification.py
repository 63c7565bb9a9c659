"""Sentence classification from CSV or JSONL: a text column, a label column, a label set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError
from .table_files import column, read_rows, refuse_empty_cells


def label_key(label: Any) -> str:
    """A label value as the label set names it (a string, surrounding spaces dropped)."""
    return str(label).strip()


def collect_label_names(path: str | Path, label_column: str) -> list[str]:
    """The labels found in a file, sorted (numerically when every label is an integer).

    An empty label is not a class (the dataset refuses its row, naming it), so it is left out here.
    """
    found = {label_key(v) for v in column(read_rows(path), label_column, path)} - {""}
    if not found:
        raise DataError(f"{path}: column {label_column!r} holds no labels (every cell is empty)")
    if all(f.lstrip("-").isdigit() for f in found):
        return sorted(found, key=int)
    return sorted(found)


class TextClassificationDataset(Dataset):
    """Tokenised examples ``{"input_ids": [...], "labels": index}`` of one file."""

    def __init__(self, path: str | Path, tokenizer: Any, label_names: list[str], *, text_column: str = "text",
                 label_column: str = "label", max_length: int = 128) -> None:
        rows = read_rows(path)
        texts = column(rows, text_column, path)
        labels = column(rows, label_column, path)
        # An empty label would train as a class of its own, an empty text as noise: refuse by row.
        refuse_empty_cells(rows, [text_column, label_column], path)
        index = {name: i for i, name in enumerate(label_names)}
        self.texts = [str(t) for t in texts]  # as written: the run's samples show them (token ids lose case)
        self.examples: list[dict[str, Any]] = []
        encoded = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length)["input_ids"]
        for number, (ids, label) in enumerate(zip(encoded, labels, strict=True), start=1):
            key = label_key(label)
            if key not in index:
                raise DataError(f"{path}, row {number}: label {key!r} is not in the label set "
                                f"({', '.join(label_names)})")
            self.examples.append({"input_ids": ids, "labels": index[key]})
            if "task_id" in rows[number - 1]:
                self.examples[-1]["task_ids"] = int(rows[number - 1]["task_id"])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]
