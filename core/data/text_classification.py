"""Sentence classification from CSV or JSONL: a text column, a label column, a label set.

The file is read once when the dataset is built (every row's label checked and kept as one
small integer, every empty cell named) and each text is read and tokenised only when its
example is asked for, so memory holds an index and the labels, not the texts: a 200 MB file
costs about 20 bytes a row.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError
from .table_files import RowTable, TableColumn, cell, refuse_found_empty, require_columns


def label_key(label: Any) -> str:
    """A label value as the label set names it (a string, surrounding spaces dropped)."""
    return str(label).strip()


def text_key(text: Any) -> int:
    """A text's fingerprint for finding the same example on both sides of a split (spaces and case ignored)."""
    return hash(" ".join(str(text).split()).casefold())


def sorted_labels(found: set[str]) -> list[str]:
    """Label names in head order: numerically when every label is an integer, else alphabetically."""
    if all(f.lstrip("-").isdigit() for f in found):
        return sorted(found, key=int)
    return sorted(found)


def collect_label_names(path: str | Path, label_column: str) -> list[str]:
    """The labels found in a file, sorted (numerically when every label is an integer), read streaming.

    An empty label is not a class (the dataset refuses its row, naming it), so it is left out here.
    """
    table = RowTable(path)
    require_columns(table, [label_column])
    found = {label_key(cell(row, label_column, number, path))
             for number, row in enumerate(table.iter_rows(), start=1)} - {""}
    if not found:
        raise DataError(f"{path}: column {label_column!r} holds no labels (every cell is empty)")
    return sorted_labels(found)


class TextClassificationDataset(Dataset):
    """Examples ``{"input_ids": [...], "labels": index}`` of one file, tokenised as they are read.

    ``texts`` is the text column as written (the run's samples show them: token ids lose case),
    read row by row; ``labels`` (label indices) and ``text_keys`` (see :func:`text_key`) are
    compact arrays, one entry a row.
    """

    def __init__(self, path: str | Path, tokenizer: Any, label_names: list[str], *, text_column: str = "text",
                 label_column: str = "label", max_length: int = 128) -> None:
        self.path = Path(path)
        self.table = RowTable(path)
        self.tokenizer, self.max_length, self.text_column = tokenizer, max_length, text_column
        require_columns(self.table, [text_column, label_column])
        index = {name: i for i, name in enumerate(label_names)}
        self.labels = array("i")
        self.text_keys = array("q")
        has_tasks = "task_id" in self.table.columns
        self.task_ids: array | None = array("q") if has_tasks else None
        empty: list[tuple[int, str]] = []
        unknown: str | None = None
        # One streaming pass: an empty label would train as a class of its own, an empty text as noise
        # (refused by row, all named at once); a label outside the set is named by its first row.
        labels, keys = self.labels.append, self.text_keys.append  # the loop runs once a row: kept lean
        for number, row in enumerate(self.table.iter_rows(), start=1):
            text, label = row.get(text_column), row.get(label_column)
            if text is None or label is None:
                cell(row, text_column, number, path), cell(row, label_column, number, path)  # raises, naming it
            text = str(text)
            key = label_key(label)
            if not text.strip():  # the checks' is_empty, inline
                empty.append((number, text_column))
            if not key:
                empty.append((number, label_column))
            elif key not in index and unknown is None:
                unknown = (f"{path}, row {number}: label {key!r} is not in the label set "
                           f"({', '.join(label_names)})")
            labels(index.get(key, -1))
            keys(text_key(text))
            if self.task_ids is not None:
                self.task_ids.append(_task_id(row, number, path))
        refuse_found_empty(empty, path)
        if unknown is not None:
            raise DataError(unknown)
        self.texts = TableColumn(self.table, text_column)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        text = str(self.table.row(index)[self.text_column])
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        example: dict[str, Any] = {"input_ids": ids, "labels": self.labels[index]}
        if self.task_ids is not None:
            example["task_ids"] = self.task_ids[index]
        return example


def _task_id(row: dict[str, Any], number: int, path: str | Path) -> int:
    value = cell(row, "task_id", number, path)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}, row {number}: task_id {value!r} is not a whole number") from None
