"""A quick look at a dataset before any model exists: its columns, a few samples, its class balance.

The window's data panel shows this while the user picks files and maps columns, so it
must be cheap (no tokenizer, no image decoding: thumbnails are read by the window from
their paths; :func:`.checks.check_data` decodes every file, on its own worker) and it
must fail with the *same* :class:`DataError` messages training would give — a missing
column or a label outside the label set is reported here, by row, before a run is started.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..run_config import DataConfig
from .causal_lm import prompt_response_pairs
from .collate import IGNORE_INDEX
from .digits import DIGIT_NAMES, load_digits_tensors
from .errors import DataError, require_file
from .image_folder import folder_images, image_folder_classes
from .table_files import RowTable, cell, require_columns
from .text_classification import label_key, sorted_labels

PREVIEW_SAMPLES = 8  # enough to recognise the data, few enough to show at once


@dataclass(frozen=True)
class PreviewSample:
    """One sample as the window shows it."""

    label: str | None  # the label's name; None for language modelling
    text: str | None = None  # the text (or the prompt of a prompt/response pair)
    response: str | None = None  # causal LM with a prompt column: the response
    image_path: str | None = None  # an image file (the window makes the thumbnail)
    pixels: Any = None  # images without files (the digits demo): uint8 array [H, W]


@dataclass(frozen=True)
class DataPreview:
    """What :func:`preview_data` found."""

    kind: str
    columns: tuple[str, ...]  # the columns of a CSV/JSONL file; () for folders and plain text
    samples: tuple[PreviewSample, ...]
    label_counts: dict[str, int] = field(default_factory=dict)  # in label-set order; {} for causal LM
    total: int = 0  # samples in the file or folder
    note: str = ""  # something to tell the user (e.g. why there is no preview)


def data_columns(path: str | Path) -> list[str]:
    """The column names of a CSV or JSONL file: the CSV header; every key of a JSONL file's rows, first-seen order."""
    table = RowTable(path)
    if table.is_csv:
        return table.columns
    seen: dict[str, None] = {}
    for row in table.iter_rows():  # streaming: a JSONL row may add a key
        seen.update(dict.fromkeys(map(str, row)))
    return list(seen)


def preview_data(config: DataConfig, count: int = PREVIEW_SAMPLES) -> DataPreview:
    """Columns, the first ``count`` samples and the class counts of ``config``'s training data.

    Raises :class:`DataError` (naming the file, row and fix) for what training would refuse.
    """
    if config.kind == "digits":
        return _digits(config, count)
    if config.kind == "image-folder":
        return _image_folder(config, count)
    if config.kind == "text-classification":
        return _text_classification(config, count)
    if config.kind == "causal-lm":
        return _causal_lm(config, count)
    return DataPreview(config.kind, (), (), note=f"torchvision dataset {config.train!r} is read when training starts")


def _digits(config: DataConfig, count: int) -> DataPreview:
    images, labels = load_digits_tensors(config.shift)
    pixels = images[:count, 0].mul(255).round().byte().numpy()
    samples = tuple(PreviewSample(DIGIT_NAMES[int(y)], pixels=p) for p, y in zip(pixels, labels[:count]))
    # One bincount, not a Python loop over 1,797 tensor elements: this runs on the data panel's worker
    # thread, and a long per-element loop there starved against the UI thread in the app tests.
    counts = torch.bincount(labels.long(), minlength=len(DIGIT_NAMES)).tolist()
    return DataPreview("digits", (), samples, {n: counts[i] for i, n in enumerate(DIGIT_NAMES)}, len(labels),
                       note=f"built-in 8×8 digits, shift: {config.shift}")


def _image_folder(config: DataConfig, count: int) -> DataPreview:
    root = require_file(config.train, "image folder")
    found = image_folder_classes(root)
    names = list(config.label_names or found)
    extra = sorted(set(found) - set(names))
    if extra:
        raise DataError(f"{root} has class folder(s) {', '.join(extra)} that are not in the label set "
                        f"({', '.join(names)})")
    per_class = {name: folder_images(root / name) if (root / name).is_dir() else [] for name in names}
    # Round-robin over the classes, so a short preview still shows every class.
    samples: list[PreviewSample] = []
    depth = 0
    while len(samples) < count and any(len(files) > depth for files in per_class.values()):
        samples += [PreviewSample(n, image_path=str(f[depth])) for n, f in per_class.items() if len(f) > depth]
        depth += 1
    counts = {name: len(files) for name, files in per_class.items()}
    return DataPreview("image-folder", (), tuple(samples[:count]), counts, sum(counts.values()))


def _text_classification(config: DataConfig, count: int) -> DataPreview:
    # One streaming pass: the first ``count`` rows are kept for the samples, the rest only counted.
    path = config.train
    table = RowTable(path)
    require_columns(table, [config.text_column, config.label_column])
    counts: Counter[str] = Counter()
    first: list[tuple[int, str, str]] = []
    seen: dict[str, None] = dict.fromkeys(table.columns)
    total = 0
    for number, row in enumerate(table.iter_rows(), start=1):
        text = cell(row, config.text_column, number, path)
        label = label_key(cell(row, config.label_column, number, path))
        counts[label] += 1
        total = number
        if len(first) < count:
            first.append((number, str(text), label))
        if not table.is_csv:
            seen.update(dict.fromkeys(map(str, row)))
    names = list(config.label_names or sorted_labels(set(counts) - {""}) or [])
    if not names:
        raise DataError(f"{path}: column {config.label_column!r} holds no labels (every cell is empty)")
    known = set(names)
    outside = [label for label in counts if label and label not in known]  # an empty label: check_data's row check
    if outside:
        number = next(n for n, row in enumerate(table.iter_rows(), start=1)
                      if label_key(row[config.label_column]) in outside)  # only on this error: find the row
        label = label_key(table.row(number - 1)[config.label_column])
        raise DataError(f"{path}, row {number}: label {label!r} is not in the label set ({', '.join(names)})")
    samples = tuple(PreviewSample(label, text=text) for _, text, label in first)
    return DataPreview("text-classification", tuple(seen), samples, {n: counts[n] for n in names}, total)


def _causal_lm(config: DataConfig, count: int) -> DataPreview:
    from .bundle import uses_chat_dataset  # here: bundle builds datasets, the plain previews need none of it

    if uses_chat_dataset(config):
        return _chat_rows(config, count)
    path = require_file(config.train)
    pairs = prompt_response_pairs(path, config.text_column, config.prompt_column, config.response_column,
                                  drop_empty=True)  # check_data names the rows with an empty cell
    columns = () if path.suffix.lower() == ".txt" else tuple(data_columns(path))
    shown = [pairs[i] for i in range(min(count, len(pairs)))]  # read only the rows shown
    if config.prompt_column:
        samples = tuple(PreviewSample(None, text=p, response=r) for p, r in shown)
    else:
        samples = tuple(PreviewSample(None, text=t) for _, t in shown)
    return DataPreview("causal-lm", columns, samples, {}, len(pairs))


@dataclass(frozen=True)
class RenderedSample:
    """One causal-LM example as training renders it: the text, and which characters the loss trains on."""

    text: str  # the rendered training text (chat template applied)
    spans: tuple[tuple[int, int, bool], ...]  # (start, end, trained) character ranges covering ``text``, in order
    tokens: int  # tokens of the example before max_length cuts it
    trained_tokens: int  # of those, the ones with a loss (labels != -100)


@dataclass(frozen=True)
class RenderedPreview:
    """What :func:`preview_rendered` found: the first examples rendered, for the Data tab's shaded view."""

    format: str  # the rows' format (alpaca, sharegpt, messages, text, prompt-response)
    loss_on: str  # assistant, response or all (resolved from auto)
    template_name: str | None  # 'chatml', "the tokenizer's own", 'custom'...; None when no template renders
    template: str | None  # the Jinja text used
    samples: tuple[RenderedSample, ...]
    total: int  # examples in the source
    note: str = ""  # e.g. that auto fell back to chatml


def preview_rendered(config: DataConfig, tokenizer: Any, count: int = PREVIEW_SAMPLES) -> RenderedPreview:
    """The first ``count`` examples of ``config``'s causal-LM training data rendered as training renders them
    (chat template, loss mask) with ``tokenizer`` (the loaded model's); bad rows raise :class:`DataError`."""
    from .chat_dataset import ChatDataset  # here: the plain previews above need neither a tokenizer nor Jinja
    from .chat_formats import CHAT_FORMATS
    from .chat_templates import resolve_chat_template

    if config.kind != "causal-lm":
        raise DataError(f"a rendered preview is for causal-lm data, not {config.kind}")
    name, template, note = resolve_chat_template(config.chat_template, tokenizer)
    dataset = ChatDataset(str(config.train), tokenizer, fmt=config.format, template=template, loss_on=config.loss_on,
                          max_length=config.max_length, text_column=config.text_column,
                          prompt_column=config.prompt_column, response_column=config.response_column,
                          split=config.dataset_split, subset=config.dataset_subset)
    samples = []
    for index in range(min(count, len(dataset))):
        pieces, example = dataset.pieces(index), dataset.full_example(index)
        spans, at = [], 0
        for text, trained in pieces:
            spans.append((at, at + len(text), trained))
            at += len(text)
        samples.append(RenderedSample("".join(t for t, _ in pieces), tuple(spans), len(example["input_ids"]),
                                      sum(1 for t in example["labels"] if t != IGNORE_INDEX)))
    chat = dataset.format in CHAT_FORMATS
    return RenderedPreview(dataset.format, dataset.loss_on, name if chat else None, template if chat else None,
                           tuple(samples), len(dataset), note=(note or "") if chat else "")


def _chat_rows(config: DataConfig, count: int) -> DataPreview:
    """Instruction and chat rows (any source ChatDataset reads), without a tokenizer: the turns before the
    last answer as the text, the last answer as the response; :func:`preview_rendered` shows the template."""
    from .chat_dataset import first_row_of, resolve_loss_on
    from .chat_formats import CONVERSATION_COLUMNS, conversation_column, detect_format, row_example
    from .chat_sources import open_rows

    rows = open_rows(str(config.train), split=config.dataset_split, subset=config.dataset_subset)
    name, columns = str(getattr(rows, "path", config.train)), rows.columns
    fmt = config.format if config.format != "auto" else detect_format(
        columns, first_row_of(rows), prompt_column=config.prompt_column, text_column=config.text_column, source=name)
    loss_on = resolve_loss_on(config.loss_on, fmt)
    column = conversation_column(fmt, columns) if fmt in CONVERSATION_COLUMNS else ""
    samples = []
    for index in range(min(count, len(rows))):
        example = row_example(rows.row(index), fmt, index + 1, name, loss_on=loss_on, column=column,
                              text_column="text" if name.lower().endswith(".txt") else config.text_column,
                              prompt_column=config.prompt_column, response_column=config.response_column)
        if example.messages:
            *before, last = example.messages
            samples.append(PreviewSample(None, text="\n".join(f"{m['role']}: {m['content']}" for m in before),
                                         response=last["content"]))
        else:
            samples.append(PreviewSample(None, text=example.prompt or example.response,
                                         response=example.response if example.prompt else None))
    return DataPreview("causal-lm", tuple(map(str, columns)), tuple(samples), {}, len(rows),
                       note=f"format: {fmt}, loss on: {loss_on}")

