"""Rows of a CSV or JSONL file, read lazily: a byte-offset index, then one row at a time.

A data file can be far larger than memory is wise to spend on it (a 200 MB CSV read into
``list[dict]`` and tokenised up front took 12 GB).  :class:`RowTable` reads the file once
to note where each row starts (an ``array('q')``: 8 bytes a row, nothing per cell) and
then parses a row only when it is asked for, by seeking to it, or streams every row in
one pass (:meth:`RowTable.iter_rows`).  The first pass over the rows also builds the index,
so a dataset that validates its rows reads the file exactly once.

Why not ``datasets``/pyarrow: the index needs nothing beyond the standard library, costs
O(rows) × 8 bytes, keeps CSV's own quoting rules (``csv`` module: a quoted cell may hold
newlines) and our error messages (file and row named), where Arrow would add a large
dependency, a cache folder beside the user's data and its own type inference of cells.

Errors name the file and the row (CSV) or line (JSONL): invalid JSON, a line that is not
UTF-8, a folder or unknown suffix — as :class:`DataError`, never a raw decode error.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError, require_file

BOM = b"\xef\xbb\xbf"
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")


def decode_line(raw: bytes, path: Path, where: str) -> str:
    """A line's bytes as text; non-UTF-8 bytes are refused naming the file and the row or line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}, {where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "save the file as UTF-8") from None


def csv_problem(exc: csv.Error) -> str:
    """What a csv error means for the user, with the fix where there is one."""
    text = str(exc)
    if "new-line character" in text:
        return "its lines end in a bare carriage return (an old Mac format); save it with \\n or \\r\\n line endings"
    if "field larger than field limit" in text:
        return (f"a cell longer than {csv.field_size_limit():,} characters; most often a quote (\") that is never "
                "closed, so the rest of the file reads as one cell")
    return text


class RowTable:
    """A CSV (header line first) or JSONL (one object per line) file as rows, parsed on demand.

    ``len(table)``, ``table.row(i)`` (a dict, by seeking to row ``i``: from 0), ``table.iter_rows()``
    (every row once, streaming) and ``table.columns`` (the CSV header, or the first JSON object's keys).
    CSV rows behave as :class:`csv.DictReader`'s: missing cells are None, extra ones go under key None,
    blank lines are no rows.  Safe to use from several threads and to pickle (DataLoader workers).
    """

    def __init__(self, path: str | Path) -> None:
        path = require_file(path)
        if path.is_dir():
            raise DataError(f"data file {path} is a folder")
        suffix = path.suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise DataError(f"data file {path}: unknown format {path.suffix!r} (use .csv or .jsonl)")
        self.path = path
        self.is_csv = suffix == ".csv"
        self._offsets: array | None = None  # start byte of every row, once a full pass has run
        self._indexed_stat: tuple[int, int] = (-1, -1)  # (size, mtime) of the file the offsets are of
        self._header: list[str] | None = None
        self._first_keys: list[str] | None = None
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._file_pid = -1

    # -- pickling: a DataLoader worker opens its own file -------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _file_pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- the public face ----------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """The CSV header, or the keys of the first JSON object."""
        if self.is_csv:
            if self._header is None:
                with self.path.open("rb") as f:
                    self._header = self._read_header(f)[0]
            return list(self._header)
        if self._first_keys is None:
            for row in self._scan(index=False):
                self._first_keys = [str(k) for k in row]
                break
        return list(self._first_keys or [])

    def __len__(self) -> int:
        return len(self._index())

    def row(self, index: int) -> dict[str, Any]:
        """Row ``index`` (from 0) as a dict, read from its offset: only that row is parsed."""
        offsets = self._index()
        if not -len(offsets) <= index < len(offsets):
            raise IndexError(f"row {index} of {len(offsets)} in {self.path}")
        index %= len(offsets)
        with self._lock:
            handle = self._handle()
            stat = os.fstat(handle.fileno())
            if (stat.st_size, stat.st_mtime_ns) != self._indexed_stat:  # offsets of another file would misread
                raise DataError(f"data file {self.path} changed after it was read; start the run again")
            handle.seek(offsets[index])
            if self.is_csv:
                lines = (decode_line(raw, self.path, f"row {index + 1}") for raw in handle)
                try:
                    record = next(csv.reader(lines), [])
                except csv.Error as exc:
                    raise DataError(f"{self.path}, row {index + 1}: not valid CSV ({csv_problem(exc)})") from None
                return self._as_dict(record)
            raw = handle.readline()
        return self._json_row(raw, lambda: f"line {self._line_number(offsets[index])}")

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row once, in order, streaming; the first full pass also builds the row index."""
        if self._offsets is not None:
            yield from self._scan(index=False)
        else:
            yield from self._scan(index=True)

    # -- the passes ---------------------------------------------------------------------------------
    def _index(self) -> array:
        if self._offsets is None:
            for _ in self._scan(index=True):
                pass
        assert self._offsets is not None
        return self._offsets

    def _scan(self, *, index: bool) -> Iterator[dict[str, Any]]:
        """Stream the rows; with ``index``, note each row's start and keep the index when the pass completes."""
        offsets = array("q")
        with self.path.open("rb") as f:
            stat = os.fstat(f.fileno())
            if self.is_csv:
                rows = self._scan_csv(f, offsets)
            else:
                rows = self._scan_jsonl(f, offsets)
            for row in rows:
                yield row
        if not offsets:
            if self.is_csv and self._header:
                raise DataError(f"data file {self.path} has a header but no rows")
            raise DataError(f"data file {self.path} is empty")
        if index:
            self._offsets, self._indexed_stat = offsets, (stat.st_size, stat.st_mtime_ns)

    def _read_header(self, f: BinaryIO) -> tuple[list[str], int]:
        """(header, byte offset after it); a UTF-8 BOM and blank lines before it are skipped."""
        position = len(BOM) if f.read(len(BOM)) == BOM else 0
        f.seek(position)
        for raw in f:
            if raw.strip():
                break
            position += len(raw)
        else:
            raise DataError(f"data file {self.path} is empty")
        f.seek(position)  # the header may be quoted over several lines: let csv read it from its start

        def lines() -> Iterator[str]:
            nonlocal position
            for raw in f:
                position += len(raw)
                yield decode_line(raw, self.path, "the header line")

        try:
            header = next(csv.reader(lines()))
        except csv.Error as exc:
            raise DataError(f"{self.path}, the header line: not valid CSV ({csv_problem(exc)})") from None
        return header, position

    def _scan_csv(self, f: BinaryIO, offsets: array) -> Iterator[dict[str, Any]]:
        header, position = self._read_header(f)
        self._header = header
        f.seek(position)
        consumed = position  # bytes handed to the csv reader so far

        def lines() -> Iterator[str]:
            nonlocal consumed
            for raw in f:
                consumed += len(raw)
                yield decode_line(raw, self.path, f"row {len(offsets) + 1}")

        start = position
        reader = csv.reader(lines())
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{self.path}, row {len(offsets) + 1}: not valid CSV ({csv_problem(exc)})") from None
            # csv reads a line at a time and stops at the end of a record, so the record began
            # where the previous one ended.
            if record:  # a blank line is no row (as DictReader)
                offsets.append(start)
                yield self._as_dict(record)
            start = consumed

    def _scan_jsonl(self, f: BinaryIO, offsets: array) -> Iterator[dict[str, Any]]:
        start = len(BOM) if f.read(len(BOM)) == BOM else 0
        f.seek(start)
        position = start
        for number, raw in enumerate(f, start=1):
            line_start, position = position, position + len(raw)
            if not raw.strip():
                continue
            offsets.append(line_start)
            row = self._json_row(raw, lambda n=number: f"line {n}")
            if self._first_keys is None:
                self._first_keys = [str(k) for k in row]
            yield row

    # -- one row ------------------------------------------------------------------------------------
    def _as_dict(self, record: list[str]) -> dict[str, Any]:
        header = self._header or []
        row: dict[str, Any] = dict(zip(header, record))
        if len(record) > len(header):
            row[None] = record[len(header):]  # type: ignore[index]  # DictReader's restkey
        elif len(record) < len(header):
            for name in header[len(record):]:
                row[name] = None
        return row

    def _json_row(self, raw: bytes, where: Any) -> dict[str, Any]:
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decode_line(raw, self.path, where())  # raises, naming the line
            raise
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.path}, {where()}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{self.path}, {where()}: expected a JSON object, got {type(row).__name__}")
        return row

    def _line_number(self, offset: int) -> int:
        """The line at byte ``offset`` (from 1): counted only for an error message."""
        lines, left = 1, offset
        with self.path.open("rb") as f:
            while left > 0:  # in chunks: the row may be gigabytes into the file
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                lines, left = lines + chunk.count(b"\n"), left - len(chunk)
        return lines

    def _handle(self) -> BinaryIO:
        if self._file is None or self._file_pid != os.getpid():
            self._file = self.path.open("rb")
            self._file_pid = os.getpid()
        return self._file

    def __del__(self) -> None:
        handle = getattr(self, "_file", None)
        if handle is not None:
            handle.close()


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a ``.csv`` (header line first) or ``.jsonl``/``.json`` (one object per line), in memory.

    For small files (a list of inputs to predict); datasets use :class:`RowTable`, which does not
    hold the rows.
    """
    return list(RowTable(path).iter_rows())


class TableColumn:
    """One column of a :class:`RowTable` as a read-only sequence of strings, each read when asked for."""

    def __init__(self, table: RowTable, name: str) -> None:
        self.table, self.name = table, name

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> str:
        return str(self.table.row(index).get(self.name))

    def __iter__(self) -> Iterator[str]:
        for row in self.table.iter_rows():
            yield str(row.get(self.name))


def require_columns(table: RowTable, names: Iterable[str]) -> None:
    """Refuse a column ``table`` does not have, listing the ones it has."""
    columns = table.columns
    for name in names:
        if name not in columns:
            raise DataError(f"{table.path}: unknown column {name!r}; the columns are: {', '.join(map(str, columns))}")


def cell(row: dict[str, Any], name: str, number: int, path: str | Path) -> Any:
    """Row ``number``'s (from 1) value in column ``name``; a row without it is refused by number."""
    value = row.get(name)
    if value is None:
        raise DataError(f"{path}, row {number}: no value in column {name!r}")
    return value


def column(rows: list[dict[str, Any]], name: str, path: str | Path) -> list[Any]:
    """The values of column ``name``; an unknown column or a row without it is refused by line."""
    if name not in rows[0]:
        raise DataError(f"{path}: unknown column {name!r}; the columns are: {', '.join(map(str, rows[0]))}")
    return [cell(row, name, number, path) for number, row in enumerate(rows, start=1)]


def is_empty(value: Any) -> bool:
    """True for a cell that holds nothing: missing, None, or only spaces."""
    return value is None or not str(value).strip()


def empty_cells(rows: Iterable[dict[str, Any]], columns: list[str]) -> list[tuple[int, str]]:
    """(row number from 1, column) of every empty cell of ``columns``: the one row check.

    Both the engine (which refuses such rows) and the window's data panel (which names them
    before a run) call it, so they never disagree.  ``rows`` may be a stream (:meth:`RowTable.iter_rows`).
    """
    return [(number, name) for number, row in enumerate(rows, start=1) for name in columns
            if name in row and is_empty(row[name])]


def empty_cells_of(row: dict[str, Any], columns: list[str]) -> list[str]:
    """The columns of ``columns`` that one row leaves empty (the per-row form of :func:`empty_cells`)."""
    return [name for name in columns if name in row and is_empty(row[name])]


def refuse_empty_cells(rows: Iterable[dict[str, Any]], columns: list[str], path: str | Path) -> None:
    """Raise :class:`DataError` naming the rows of ``path`` with an empty cell in ``columns``."""
    refuse_found_empty(empty_cells(rows, columns), path)


def refuse_found_empty(found: list[tuple[int, str]], path: str | Path) -> None:
    """Raise :class:`DataError` for the (row, column) empty cells ``found`` in ``path`` (nothing when none)."""
    if not found:
        return
    number, name = found[0]
    more = f" (and {len(found) - 1} more: rows {', '.join(str(n) for n, _ in found[1:6])}" \
           f"{'…' if len(found) > 6 else ''})" if len(found) > 1 else ""
    raise DataError(f"{path}, row {number}: empty {name!r}{more}; fill the cells in or delete those rows")
