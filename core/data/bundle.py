"""The datasets one run trains on: the label set first (it sizes the head), then the datasets.

Every data kind is dispatched here, so a new kind is one branch in each of the two functions
below plus its own dataset module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..disk.resource_files import demo_file
from ..models.loaded_model import LoadedModel
from ..run_config import DataConfig
from .causal_lm import CausalLMDataset
from .chat_dataset import ChatDataset, detected_format
from .chat_formats import CHAT_FORMATS
from .chat_templates import resolve_chat_template
from .collate import make_collate
from .digits import DIGIT_NAMES, TensorExamples, digits_split, load_digits_tensors
from .errors import DataError
from .image_folder import ImageFolderDataset, image_folder_classes
from .sanity import check_bundle, refuse_single_class, refuse_unseen_classes
from .splits import first, split_dataset
from .text_classification import TextClassificationDataset, collect_label_names
from .torchvision_datasets import TorchvisionExamples, open_torchvision_dataset

DEMO_SENTENCES = "sentences.csv"


@dataclass
class DataBundle:
    """What training needs from the data."""

    train: Dataset
    validation: Dataset | None
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    label_names: list[str] | None  # None for language modelling
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (bad_images = 'skip')
    warnings: list[str] = field(default_factory=list)  # data that trains but may mislead (sanity.check_bundle)
    # Chat data: the Jinja text the examples were rendered with (also set as the tokenizer's chat_template, so
    # generation and a merged export's tokenizer use it); save it with the run and its adapter
    # (disk.adapter_folder.write_chat_template).  None when no template rendered the data.
    chat_template: str | None = None


def read_label_names(config: DataConfig) -> list[str] | None:
    """The label set, in head order: as configured, else found in the data; None for causal LM."""
    if config.kind == "causal-lm":
        return None
    if config.kind == "digits":
        return DIGIT_NAMES
    if config.label_names:
        refuse_single_class(list(config.label_names), "data.label_names")
        return list(config.label_names)
    if config.kind == "image-folder":
        names = image_folder_classes(config.train)
        refuse_single_class(names, f"image folder {config.train}")
        return names
    if config.kind == "text-classification":
        names = collect_label_names(config.train, config.label_column)
        refuse_single_class(names, f"{config.train} (column {config.label_column!r})")
        return names
    base = open_torchvision_dataset(config.train, train=True, root=config.root, download=config.download)
    return [str(c) for c in getattr(base, "classes", sorted({int(t) for t in base.targets}))]


def demo_sentences_path() -> str:
    """The text demo's labelled sentences (resources/demo/sentences.csv)."""
    return str(demo_file(DEMO_SENTENCES))


def build_datasets(config: DataConfig, loaded: LoadedModel, label_names: list[str] | None) -> DataBundle:
    """Train and validation datasets for ``loaded``, with its tokenizer or image transform."""
    if label_names is not None and loaded.num_classes is not None and len(label_names) > loaded.num_classes:
        raise DataError(f"the data has {len(label_names)} classes but the model's head has {loaded.num_classes} "
                        "outputs; set model.num_classes (a new head) or fix the label set")
    pad_id = 0
    skipped: list[str] = []
    chat: dict[str, str] = {}  # causal LM through ChatDataset: the template and format the first dataset found
    if config.kind == "digits":
        images, labels = load_digits_tensors(config.shift)
        train_idx, val_idx = digits_split(len(labels), seed=config.split_seed)
        train = TensorExamples(images[train_idx], labels[train_idx])
        validation: Dataset | None = TensorExamples(images[val_idx], labels[val_idx])
        return DataBundle(first(train, config.max_samples), validation, make_collate(), label_names)
    if config.kind in ("text-classification", "causal-lm"):
        tokenizer = loaded.tokenizer
        if tokenizer is None:
            raise DataError(f"data.kind {config.kind} needs a model with a tokenizer (a transformers model)")
        pad_id = tokenizer.pad_token_id or 0

        def make(path: str) -> Dataset:
            if config.kind == "text-classification":
                return TextClassificationDataset(path, tokenizer, label_names, text_column=config.text_column,
                                                 label_column=config.label_column, max_length=config.max_length)
            if uses_chat_dataset(config):
                return chat_causal_lm(config, tokenizer, path, chat, validation=path != config.train)
            return CausalLMDataset(path, tokenizer, text_column=config.text_column, prompt_column=config.prompt_column,
                                   response_column=config.response_column, max_length=config.max_length,
                                   packing=config.packing)
    elif config.kind == "image-folder":
        transform = _image_transform(config, loaded)

        def make(path: str) -> Dataset:
            dataset = ImageFolderDataset(path, label_names, transform, image_mode=loaded.image_mode,
                                         bad_images=config.bad_images)
            skipped.extend(str(p) for p in dataset.skipped)
            return dataset
    else:
        transform = _image_transform(config, loaded)

        def make(path: str, train: bool = True) -> Dataset:
            base = open_torchvision_dataset(path, train=train, root=config.root, download=config.download)
            return TorchvisionExamples(base, transform, loaded.image_mode)

    data = make(config.train)
    if config.validation:
        if config.kind in ("text-classification", "image-folder"):
            refuse_unseen_classes(config.kind, config.train, config.validation, data, label_names,
                                  config.label_column)
        train, validation = data, make(config.validation)
    elif config.kind == "torchvision" and config.validation_split == 0:
        train, validation = data, make(config.train, train=False)  # the dataset's own test split
    else:
        train, validation = split_dataset(data, config.validation_split, config.split_seed)
    warnings = check_bundle(config.kind, config.train, config.validation, train, validation, label_names)
    if config.kind == "causal-lm" and chat.get("rendered") and chat.get("note"):
        warnings.append(chat["note"])
    return DataBundle(first(train, config.max_samples), validation, make_collate(pad_id), label_names, skipped,
                      warnings, chat_template=chat.get("rendered"))


def uses_chat_dataset(config: DataConfig) -> bool:
    """True when causal-LM data goes through :class:`.chat_dataset.ChatDataset` (templates, other sources);
    False for the .txt/.csv/.jsonl text and prompt/response files :class:`.causal_lm.CausalLMDataset` reads."""
    sources = [config.train] + ([config.validation] if config.validation else [])
    if any(Path(str(s)).suffix.lower() not in (".txt", ".csv", ".jsonl") for s in sources):
        return True  # .json lists, Parquet, Arrow, save_to_disk folders, hub ids
    if config.format in CHAT_FORMATS or config.loss_on == "all" and config.prompt_column:
        return True
    if config.format != "auto" or Path(str(config.train)).suffix.lower() == ".txt":
        return False
    return detected_format(config) in CHAT_FORMATS


def chat_causal_lm(config: DataConfig, tokenizer: Any, path: str, chat: dict[str, str], *,
                   validation: bool = False) -> Dataset:
    """The :class:`.chat_dataset.ChatDataset` of ``path`` (packed when data.packing).

    ``chat`` is shared by the train and validation calls: it gets the resolved template (``template``),
    the ``note`` to warn with when auto fell back to a built-in, the detected ``format`` and, when a
    template rendered the examples, ``rendered`` (that template)."""
    if "template" not in chat:
        name, template, note = resolve_chat_template(config.chat_template, tokenizer)
        chat.update(template=template, name=name, **({"note": note} if note else {}))
    dataset = ChatDataset(path, tokenizer, fmt=chat.get("format", config.format), template=chat["template"],
                          loss_on=config.loss_on, max_length=config.max_length, text_column=config.text_column,
                          prompt_column=config.prompt_column, response_column=config.response_column,
                          split=config.validation_dataset_split if validation else config.dataset_split,
                          subset=config.dataset_subset)
    chat["format"] = dataset.format  # validation data is read in the training data's format
    if dataset.format in CHAT_FORMATS:
        chat["rendered"] = chat["template"]
        tokenizer.chat_template = chat["template"]  # generation and the exported tokenizer render as training did
    if not config.packing:
        return dataset
    try:
        from .packing import PackedDataset
    except ImportError:
        raise DataError("packing is not yet available for chat data; set data.packing = false") from None
    full = (dataset.full_example(i) for i in range(len(dataset)))
    return PackedDataset(full, config.max_length, source=dataset.name)


def _image_transform(config: DataConfig, loaded: LoadedModel) -> Callable[[Any], Any]:
    from torchvision.transforms import v2

    if config.image_size is None and loaded.image_transform is not None:
        return loaded.image_transform
    steps = [v2.PILToTensor(), v2.ToDtype(__import__("torch").float32, scale=True)]
    if config.image_size is not None:
        steps.insert(0, v2.Resize((config.image_size, config.image_size)))
    return v2.Compose(steps)
