"""Every file a run would count, checked before the run: images decoded, table rows read.

The window's data panel runs :func:`check_data` on a worker after each data change and
lists what it finds; training applies the very same checks (:func:`check_image_file` in the
image-folder dataset, :func:`.table_files.empty_cells_of` in the table datasets), so what the panel calls
good is what training reads, and what it names is what training would refuse or skip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..run_config import DataConfig
from .bundle import uses_chat_dataset
from .errors import require_file
from .image_folder import check_image_file, folder_images, image_folder_classes
from .table_files import RowTable, empty_cells_of


class CheckCancelled(Exception):
    """:func:`check_data` was told to stop (a newer check replaces it)."""


@dataclass(frozen=True)
class BadItem:
    """One file (or one row of a table) training cannot use, and why."""

    path: str
    reason: str  # "zero bytes", "not an image", "truncated", "empty 'label'", ...
    row: int | None = None  # the row number (from 1) in a table; None for a whole file
    label: str | None = None  # the class folder an image sits in

    def describe(self) -> str:
        """One line for the user: where, and what is wrong."""
        where = f"{self.path}, row {self.row}" if self.row is not None else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class DataCheck:
    """What :func:`check_data` found."""

    kind: str
    checked: int = 0  # files (images) or rows (tables) looked at
    bad: tuple[BadItem, ...] = ()
    good_counts: dict[str, int] = field(default_factory=dict)  # image folders: readable images per class
    note: str = ""  # e.g. why nothing was checked

    @property
    def good(self) -> int:
        """How many of the checked files or rows training can use."""
        return self.checked - len({(b.path, b.row) for b in self.bad})


def check_data(config: DataConfig, *, cancelled: Callable[[], bool] = lambda: False,
               on_progress: Callable[[int, int], None] | None = None) -> DataCheck:
    """Check every training (and validation) file or row ``config`` names.

    ``cancelled`` is polled between files (raise :class:`CheckCancelled` when it says so);
    ``on_progress(done, total)`` is called now and then.  Raises ``DataError`` where the
    data cannot be read at all (a missing folder, a table that is not valid JSON).
    """
    paths = [p for p in (config.train, config.validation) if p]
    if config.kind == "image-folder":
        return _check_images(config, paths, cancelled, on_progress)
    if config.kind in ("text-classification", "causal-lm"):
        return _check_tables(config, paths, cancelled)
    what = "built in" if config.kind == "digits" else "read when training starts"
    return DataCheck(config.kind, note=f"no files to check ({what})")


def _check_images(config: DataConfig, paths: list[str], cancelled: Callable[[], bool],
                  on_progress: Callable[[int, int], None] | None) -> DataCheck:
    files: list[tuple[Path, str, bool]] = []  # (file, class, in the training folder)
    for index, root in enumerate(paths):
        root_path = require_file(root, "image folder")
        names = config.label_names or image_folder_classes(root_path)
        files += [(f, name, index == 0) for name in names if (root_path / name).is_dir()
                  for f in folder_images(root_path / name)]
    bad: list[BadItem] = []
    good_counts = {name: 0 for name in (config.label_names or image_folder_classes(paths[0]))}
    for done, (path, label, training) in enumerate(files):
        if cancelled():
            raise CheckCancelled
        if on_progress is not None and done % 16 == 0:
            on_progress(done, len(files))
        reason = check_image_file(path)
        if reason is not None:
            bad.append(BadItem(str(path), reason, label=label))
        elif training:
            good_counts[label] = good_counts.get(label, 0) + 1
    if on_progress is not None:
        on_progress(len(files), len(files))
    return DataCheck("image-folder", len(files), tuple(bad), good_counts)


def _check_tables(config: DataConfig, paths: list[str], cancelled: Callable[[], bool]) -> DataCheck:
    if uses_chat_dataset(config):  # JSON lists, Parquet, datasets folders, hub ids: not rows of a CSV/JSONL
        return DataCheck(config.kind, note="chat and instruction rows are checked, row by row, when training starts")
    bad: list[BadItem] = []
    checked = 0
    for path in paths:
        if cancelled():
            raise CheckCancelled
        if Path(path).suffix.lower() == ".txt":  # paragraphs: an empty one is no example at all
            continue
        if config.kind == "causal-lm":
            columns = [config.prompt_column, config.response_column] if config.prompt_column else [config.text_column]
        else:
            columns = [config.text_column, config.label_column]
        for number, row in enumerate(RowTable(path).iter_rows(), start=1):  # streaming: one row in memory
            if number % 4096 == 0 and cancelled():
                raise CheckCancelled
            checked += 1
            bad += [BadItem(path, f"empty {name!r}", row=number) for name in empty_cells_of(row, columns)]
    return DataCheck(config.kind, checked, tuple(bad))
