"""Where chat and instruction rows come from: a file, a ``datasets`` folder, or a Hugging Face hub id.

Every source is a sequence of dict rows with ``len``, ``row(i)`` (from 0), ``iter_rows()`` and
``columns``, read lazily where the format allows:

* ``.csv`` / ``.jsonl`` (and a ``.json`` file of one object per line): :class:`.table_files.RowTable`,
  a byte-offset index and one row parsed at a time;
* ``.json`` holding one JSON list of objects: parsed whole (a JSON array cannot be read row by row;
  convert big sets to JSONL);
* ``.txt``: its paragraphs (blank-line separated), as rows with a ``text`` column;
* ``.parquet``: pyarrow, one row group in memory at a time;
* ``.arrow`` files and ``save_to_disk`` folders: ``datasets``, memory-mapped (nothing is copied);
* a hub id (``owner/name``, or ``hf:owner/name``): ``datasets.load_dataset`` with ``data.dataset_subset``
  and the split, only when online; offline (``HF_HUB_OFFLINE=1``) it is refused naming the id.

``datasets`` and ``pyarrow`` are imported only when such a source is used, so the CLI and the window
start without them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..models.offline import offline
from .causal_lm import Paragraphs
from .errors import DataError, require_file
from .table_files import BOM, RowTable

HUB_PREFIX = "hf:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(source: str) -> str | None:
    """The hub dataset id ``source`` names (``hf:owner/name``, or ``owner/name`` that is no local path), or None."""
    if source.startswith(HUB_PREFIX):
        return source[len(HUB_PREFIX):]
    if not Path(source).expanduser().exists() and _HUB_ID.match(source) and not Path(source).suffix:
        return source
    return None


class JsonListRows:
    """A ``.json`` file holding one list of objects, parsed once (the only way to read a JSON array)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(rows, list) or not rows:
            raise DataError(f"{path}: expected a non-empty JSON list of objects (one per example)")
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}, row {number}: expected a JSON object, got {type(row).__name__}")
        self.rows: list[dict[str, Any]] = rows

    @property
    def columns(self) -> list[str]:
        """The keys of the first object."""
        return [str(k) for k in self.rows[0]]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, Any]:
        """Row ``index`` (from 0)."""
        return self.rows[index]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row, in order."""
        return iter(self.rows)


class ParagraphRows:
    """A ``.txt`` file's paragraphs (blank-line separated) as rows ``{"text": paragraph}``."""

    columns = ["text"]

    def __init__(self, path: Path) -> None:
        self.path, self.paragraphs = path, Paragraphs(path)

    def __len__(self) -> int:
        return len(self.paragraphs)

    def row(self, index: int) -> dict[str, Any]:
        """Paragraph ``index`` (from 0)."""
        return {"text": self.paragraphs[index]}

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every paragraph, in order."""
        for index in range(len(self)):
            yield self.row(index)


class ParquetRows:
    """A Parquet file's rows, one row group decoded at a time (the group last read is kept)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(str(path))
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        meta = self.file.metadata
        self.group_starts = [0]
        for group in range(meta.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + meta.row_group(group).num_rows)
        if self.group_starts[-1] == 0:
            raise DataError(f"data file {path} has no rows")
        self._cached: tuple[int, list[dict[str, Any]]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker reopens the file
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def columns(self) -> list[str]:
        """The schema's column names."""
        return list(self.file.schema_arrow.names)

    def __len__(self) -> int:
        return self.group_starts[-1]

    def row(self, index: int) -> dict[str, Any]:
        """Row ``index`` (from 0), decoding its row group unless it is the one last read."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} in {self.path}")
        group = next(g for g in range(len(self.group_starts) - 1) if index < self.group_starts[g + 1])
        if self._cached is None or self._cached[0] != group:
            self._cached = (group, self.file.read_row_group(group).to_pylist())
        return self._cached[1][index - self.group_starts[group]]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row, in order, a batch at a time."""
        for batch in self.file.iter_batches(batch_size=1024):
            yield from batch.to_pylist()


class HFRows:
    """A ``datasets.Dataset`` (memory-mapped Arrow) as rows."""

    def __init__(self, dataset: Any, name: str) -> None:
        self.dataset, self.path = dataset, name
        if len(dataset) == 0:
            raise DataError(f"dataset {name} has no rows")

    @property
    def columns(self) -> list[str]:
        """The dataset's column names."""
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> dict[str, Any]:
        """Row ``index`` (from 0)."""
        return self.dataset[int(index)]

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row, in order."""
        return iter(self.dataset)


def _pick_split(found: Any, name: str, split: str) -> Any:
    """One split of a ``DatasetDict`` (a dataset that is not split is itself)."""
    import datasets

    if isinstance(found, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in found:
            raise DataError(f"dataset {name} has no split {split!r}; its splits are: {', '.join(found.keys())} "
                            "(set data.dataset_split)")
        return found[split]
    return found


def open_hub_dataset(identifier: str, subset: str | None, split: str) -> HFRows:
    """The hub dataset ``identifier`` (``subset``, ``split``) as rows; refused offline, naming the id."""
    name = identifier + (f" (subset {subset})" if subset else "")
    if offline("HF_DATASETS_OFFLINE"):
        raise DataError(f"data.train {identifier!r} is a Hugging Face hub dataset, but HF_HUB_OFFLINE is set: "
                        "the hub cannot be reached offline; unset HF_HUB_OFFLINE to download it, or give a local "
                        "file or a save_to_disk folder")
    import datasets

    try:
        found = datasets.load_dataset(identifier, subset, split=split)
    except (ConnectionError, OSError) as exc:
        raise DataError(f"hub dataset {name} could not be read ({exc}); check the id and the connection, or set "
                        "HF_HUB_OFFLINE=1 and use a local copy") from None
    except ValueError as exc:  # an unknown split or subset
        raise DataError(f"hub dataset {name}: {exc} (set data.dataset_split / data.dataset_subset)") from None
    return HFRows(_pick_split(found, name, split), f"hub dataset {name}, split {split}")


def open_rows(source: str, *, split: str = "train", subset: str | None = None) -> Any:
    """The rows of ``source`` (a file, a ``datasets`` folder or a hub id), lazily where the format allows."""
    identifier = hub_id(source)
    if identifier is not None:
        return open_hub_dataset(identifier, subset, split)
    path = require_file(Path(source).expanduser())
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise DataError(f"{path} is a folder but not a datasets save_to_disk folder (no dataset_info.json or "
                            "dataset_dict.json); give a .jsonl, .json, .csv or .parquet file")
        import datasets

        try:
            found = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable save_to_disk folder ({exc})") from None
        return HFRows(_pick_split(found, str(path), split), str(path))
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return ParagraphRows(path)
    if suffix == ".parquet":
        return ParquetRows(path)
    if suffix == ".arrow":
        import datasets

        try:
            return HFRows(datasets.Dataset.from_file(str(path)), str(path))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable Arrow file ({exc})") from None
    if suffix == ".json":
        with path.open("rb") as handle:
            head = handle.read(4096).removeprefix(BOM).lstrip()
        if head.startswith(b"["):
            try:
                text = path.read_bytes().removeprefix(BOM).decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
            return JsonListRows(path, text)
    if suffix in (".csv", ".jsonl", ".json"):
        return RowTable(path)
    raise DataError(f"data file {path}: unknown format {path.suffix!r} (use .jsonl, .json, .csv, .parquet or .arrow, "
                    "a save_to_disk folder or a hub id)")
