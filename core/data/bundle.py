"""The datasets one run trains on: the label set first (it sizes the head), then the datasets.

Every data kind is dispatched here, so a new kind is one branch in each of the two functions
below plus its own dataset module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from ..disk.resource_files import demo_file
from ..models.loaded_model import LoadedModel
from ..run_config import DataConfig
from .causal_lm import CausalLMDataset
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
    return DataBundle(first(train, config.max_samples), validation, make_collate(pad_id), label_names, skipped,
                      warnings)


def _image_transform(config: DataConfig, loaded: LoadedModel) -> Callable[[Any], Any]:
    from torchvision.transforms import v2

    if config.image_size is None and loaded.image_transform is not None:
        return loaded.image_transform
    steps = [v2.PILToTensor(), v2.ToDtype(__import__("torch").float32, scale=True)]
    if config.image_size is not None:
        steps.insert(0, v2.Resize((config.image_size, config.image_size)))
    return v2.Compose(steps)
