"""Data that reads fine but would train or score wrongly: refused, or warned about, by name.

* one class only (a 1-output head learns nothing: loss 0, accuracy 100 %) — refused;
* a class in a validation file that the training data lacks — refused (the model cannot
  learn it; a held-out split that happened to take all of a class's examples is warned about);
* the same text on both sides of train/validation — warned (those scores read too high).

:func:`check_bundle` runs where the datasets are built (``bundle.build_datasets``), so the
CLI, the window and a script all see the same refusals and warnings.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset

from .errors import DataError
from .image_folder import ImageFolderDataset, image_folder_classes
from .splits import IndexArray
from .text_classification import TextClassificationDataset, collect_label_names

EXAMPLE_CHARS = 60  # how much of a duplicated text a warning quotes


def refuse_single_class(names: list[str], where: str) -> None:
    """Refuse a label set of fewer than two classes: ``where`` names the file, folder or setting."""
    if len(names) == 1:
        raise DataError(f"{where} has only one class {names[0]!r}; a classifier needs two or more "
                        "(add examples of another class)")


def unwrap(dataset: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The dataset under splits and sample caps, and the rows of it that ``dataset`` holds (None: all)."""
    rows: np.ndarray | None = None
    while isinstance(dataset, Subset):
        indices = dataset.indices
        indices = indices.array if isinstance(indices, IndexArray) else np.asarray(indices, dtype=np.int64)
        rows = indices if rows is None else indices[rows]
        dataset = dataset.dataset
    return dataset, rows


def present_classes(dataset: Dataset) -> set[int] | None:
    """The label indices ``dataset`` holds; None for a kind this module does not look into."""
    inner, rows = unwrap(dataset)
    if isinstance(inner, TextClassificationDataset):
        labels = np.frombuffer(inner.labels, dtype=np.int32) if len(inner.labels) else np.zeros(0, np.int32)
    elif isinstance(inner, ImageFolderDataset):
        labels = np.asarray([label for _, label in inner.samples], dtype=np.int32)
    else:
        return None
    return {int(v) for v in np.unique(labels if rows is None else labels[rows])}


def refuse_unseen_classes(kind: str, train_path: str, validation_path: str, train: Dataset,
                          label_names: list[str] | None, label_column: str) -> None:
    """Refuse a validation file or folder holding a class the training data has no example of.

    Run before the validation dataset is built, so the message names both sides rather than
    only "not in the label set".
    """
    trained = present_classes(train)
    if label_names is None or trained is None:
        return
    present = {label_names[i] for i in trained}
    found = (collect_label_names(validation_path, label_column) if kind == "text-classification"
             else image_folder_classes(validation_path))
    missing = [name for name in found if name not in present]
    if missing:
        raise DataError(f"class {missing[0]!r}{_more(missing)} is in the validation data {validation_path} but "
                        f"not in the training data {train_path}; add training examples of it or remove it "
                        "from the validation data")


def check_bundle(kind: str, train_path: str, validation_path: str | None, train: Dataset,
                 validation: Dataset | None, label_names: list[str] | None) -> list[str]:
    """Refuse one-class training data; warn about classes only a held-out split has (``validation_path``
    None: ``validation`` was split off the training file), and about texts on both sides."""
    warnings: list[str] = []
    if label_names is None or kind not in ("text-classification", "image-folder"):
        return warnings
    whole, _ = unwrap(train)
    trained = present_classes(whole)  # the whole training file: a sample cap is the user's own choice
    if trained is None:
        return warnings
    refuse_single_class([label_names[i] for i in sorted(trained)], f"the training data {train_path}")
    if validation is not None and validation_path is None:
        held = present_classes(validation) or set()
        in_train = present_classes(train) or set()
        missing = [label_names[i] for i in sorted(held - in_train)]
        if missing:
            warnings.append(f"class {missing[0]!r}{_more(missing)} is only in the validation split of {train_path}: "
                            "the model never trains on it; use more examples of it or another data.split_seed")
    duplicate = duplicate_texts(train, validation, train_path, validation_path)
    if duplicate:
        warnings.append(duplicate)
    return warnings


def duplicate_texts(train: Dataset, validation: Dataset | None, train_path: str,
                    validation_path: str | None) -> str | None:
    """A warning naming how many training texts also appear in the validation data, with one example."""
    if validation is None:
        return None
    train_inner, train_rows = unwrap(train)
    val_inner, val_rows = unwrap(validation)
    if not (isinstance(train_inner, TextClassificationDataset) and isinstance(val_inner, TextClassificationDataset)):
        return None
    val_keys = _keys(val_inner) if val_rows is None else _keys(val_inner)[val_rows]
    count, first = shared_keys(_keys(train_inner), train_rows, np.unique(val_keys))
    if not count:
        return None
    text = train_inner.texts[first]
    quoted = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"
    where = f"the validation data {validation_path}" if validation_path else "the validation split"
    return (f"{count} training example(s) of {train_path} also appear in {where} (the same text), e.g. row "
            f"{first + 1}: {quoted!r}; validation scores on them read too high — remove them from one side")


def shared_keys(keys: np.ndarray, rows: np.ndarray | None, others: np.ndarray,
                chunk: int = 1 << 16) -> tuple[int, int]:
    """(how many of ``keys`` (at ``rows`` only, when given) are in the sorted ``others``, the first such row).

    In chunks, so a file of millions of rows costs a few MB beyond its key arrays.
    """
    count, first = 0, -1
    total = len(keys) if rows is None else len(rows)
    if not len(others):
        return 0, -1
    for start in range(0, total, chunk):
        where = np.arange(start, min(start + chunk, total)) if rows is None else rows[start:start + chunk]
        part = keys[where]
        places = np.minimum(np.searchsorted(others, part), len(others) - 1)
        hits = np.flatnonzero(others[places] == part)
        if len(hits) and first < 0:
            first = int(where[hits[0]])
        count += len(hits)
    return count, first


def _keys(dataset: TextClassificationDataset) -> np.ndarray:
    return np.frombuffer(dataset.text_keys, dtype=np.int64) if len(dataset.text_keys) else np.zeros(0, np.int64)


def _more(names: list[str]) -> str:
    return f" (and {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""

