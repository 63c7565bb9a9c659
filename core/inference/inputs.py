"""A user's inputs made into one batch for a model: texts tokenized, images opened and
transformed as the model was trained on them, tensors passed as they are, or a custom model's
own ``studio_preprocess``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.image_folder import check_image_file
from ..data.table_files import RowTable
from ..models import LoadedModel

MODEL_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_TOKENS = 512  # text classifiers: longer inputs are cut (BERT-style position limit)


def input_label(item: Any, index: int) -> str:
    """How an input is named in the results: the text, the image's path, or a short description."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, torch.Tensor):
        return f"<tensor {tuple(item.shape)}>"
    filename = getattr(item, "filename", "")  # a PIL image opened from a file keeps its name
    return str(filename) if filename else f"<{type(item).__name__} {index + 1}>"


def custom_preprocess(model: torch.nn.Module):
    """The model's own ``studio_preprocess(inputs: list) -> batch`` hook, or None."""
    hook = getattr(model, "studio_preprocess", None)
    return hook if callable(hook) else None


def make_batch(loaded: LoadedModel, items: Sequence[Any]) -> Any:
    """One batch for ``loaded`` from ``items``: a dict of tensors (transformers text), a pixel
    tensor, or whatever the model's ``studio_preprocess`` returns.  ValueError names a bad input."""
    hook = custom_preprocess(loaded.model)
    if hook is not None:
        return hook(list(items))
    if loaded.task == "sequence-classification":
        return _text_batch(loaded, items)
    if loaded.task == "image-classification":
        return torch.stack([image_tensor(loaded, item) for item in items])
    raise ValueError(f"predict runs classifiers; this model's task is {loaded.task} (use generate for causal-lm)")


def _text_batch(loaded: LoadedModel, items: Sequence[Any]) -> dict[str, torch.Tensor]:
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise ValueError(f"{loaded.name_or_path or 'this model'} has no tokenizer to read text with")
    texts = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a text classifier takes text; got a {type(item).__name__} ({input_label(item, 0)})")
        texts.append(item)
    limit = getattr(tokenizer, "model_max_length", None)
    max_length = min(DEFAULT_MAX_TOKENS, limit) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in MODEL_TEXT_INPUTS}


def image_tensor(loaded: LoadedModel, item: Any) -> torch.Tensor:
    """One image as the model's CHW input: a path or PIL image converted to ``loaded.image_mode``
    and run through ``loaded.image_transform``; a CHW tensor as it is."""
    if isinstance(item, torch.Tensor):
        if item.dim() != 3:
            raise ValueError(f"an image tensor must be CHW (3 dimensions); got shape {tuple(item.shape)}")
        return item.float()
    if isinstance(item, (str, Path)):
        return _transformed(loaded, _open_image(Path(item)))
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        return _transformed(loaded, item)
    raise ValueError(f"an image classifier takes image paths, PIL images or CHW tensors; got a {type(item).__name__}")


def _open_image(path: Path):
    if not path.is_file():
        raise ValueError(f"image {path} does not exist" if not path.exists() else f"image {path} is not a file")
    reason = check_image_file(path)  # the data's own image check: the same words as the data panel
    if reason is not None:
        raise ValueError(f"image {path} cannot be read ({reason}); pick an image file (PNG, JPEG, ...)")
    with Image.open(path) as image:
        image.load()
        return image.copy()


def pixels_of(image) -> torch.Tensor:
    """A PIL image's pixels as a float CHW tensor in [0, 1] (8-bit modes; others via RGB).

    Written here rather than torchvision's ``to_tensor``: nothing is imported lazily on the
    window's worker thread (imports there have deadlocked against PySide's import hook)."""
    if image.mode not in ("L", "RGB", "RGBA", "LA", "CMYK"):
        image = image.convert("RGB")
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    width, height = image.size
    return data.view(height, width, len(image.getbands())).permute(2, 0, 1).float().div(255.0).contiguous()


def on_white(image):
    """An image with transparency laid on white paper (what a viewer shows); others as they are.
    Converting straight to ``L`` or ``RGB`` would turn transparent paper black."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, image).convert("RGB")
    return image


def _transformed(loaded: LoadedModel, image) -> torch.Tensor:
    if "A" not in loaded.image_mode:
        image = on_white(image)
    image = image.convert(loaded.image_mode)
    if loaded.image_transform is not None:
        out = loaded.image_transform(image)
    else:  # a custom model without preprocessing: the pixels in [0, 1], CHW
        out = pixels_of(image)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model's image transform returned a {type(out).__name__}, not a tensor")
    return out


TABLE_SUFFIXES = (".csv", ".jsonl", ".json")
INPUT_COLUMNS = ("text", "sentence", "image", "path", "file", "input", "prompt")  # looked for in this order


def inputs_from_table(path: str | Path, *, column: str | None = None, images: bool = False) -> list[str]:
    """The inputs listed in a ``.csv`` or ``.jsonl`` file: the ``column`` given, else the first of
    text/sentence/image/path/file/input/prompt it has, else its only column.  ``images``: the
    values are image paths, relative ones to the file's own folder."""
    path = Path(path)
    table = RowTable(path)  # streamed: only the one column's values are kept
    names = table.columns
    if column is None:
        column = next((c for c in INPUT_COLUMNS if c in names), names[0] if len(names) == 1 else None)
        if column is None:
            raise ValueError(f"{path} has the columns {', '.join(names)}; say which holds the inputs "
                             f"(a column named {' or '.join(INPUT_COLUMNS[:3])}, or --column NAME)")
    elif column not in names:
        raise ValueError(f"{path} has no column {column!r}; its columns: {', '.join(names)}")
    values = []
    for number, row in enumerate(table.iter_rows(), start=1):
        value = row.get(column)
        if value is None or not str(value).strip():
            raise ValueError(f"{path}, row {number}: the {column!r} column is empty")
        value = str(value)
        if images and not Path(value).expanduser().is_absolute():
            value = str(path.parent / value)
        values.append(value)
    return values
