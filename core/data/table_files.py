"""Rows of a CSV or JSONL file as dicts, with errors that name the file and the line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import DataError, require_file


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a ``.csv`` (header line first) or ``.jsonl``/``.json`` (one object per line)."""
    path = require_file(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a folder")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        if not rows:
            raise DataError(f"data file {path} has a header but no rows")
        return rows
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows
    raise DataError(f"data file {path}: unknown format {path.suffix!r} (use .csv or .jsonl)")


def column(rows: list[dict[str, Any]], name: str, path: str | Path) -> list[Any]:
    """The values of column ``name``; an unknown column or a row without it is refused by line."""
    if name not in rows[0]:
        raise DataError(f"{path}: unknown column {name!r}; the columns are: {', '.join(map(str, rows[0]))}")
    values = []
    for number, row in enumerate(rows, start=1):
        if name not in row or row[name] is None:
            raise DataError(f"{path}, row {number}: no value in column {name!r}")
        values.append(row[name])
    return values


def is_empty(value: Any) -> bool:
    """True for a cell that holds nothing: missing, None, or only spaces."""
    return value is None or not str(value).strip()


def empty_cells(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[int, str]]:
    """(row number from 1, column) of every empty cell of ``columns``: the one row check.

    Both the engine (which refuses such rows) and the window's data panel (which names them
    before a run) call it, so they never disagree.
    """
    return [(number, name) for number, row in enumerate(rows, start=1) for name in columns
            if name in row and is_empty(row[name])]


def refuse_empty_cells(rows: list[dict[str, Any]], columns: list[str], path: str | Path) -> None:
    """Raise :class:`DataError` naming the rows of ``path`` with an empty cell in ``columns``."""
    found = empty_cells(rows, columns)
    if not found:
        return
    number, name = found[0]
    more = f" (and {len(found) - 1} more: rows {', '.join(str(n) for n, _ in found[1:6])}" \
           f"{'…' if len(found) > 6 else ''})" if len(found) > 1 else ""
    raise DataError(f"{path}, row {number}: empty {name!r}{more}; fill the cells in or delete those rows")
