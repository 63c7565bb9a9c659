"""Datasets: image folders, text classification, causal LM, torchvision's sets, and the digits demo.

Two steps, because the model's head needs the label set and the text datasets need
the model's tokenizer::

    labels = read_label_names(config.data)                      # before the model is built
    bundle = build_datasets(config.data, loaded_model, labels)  # with its preprocessing

Bad data raises :class:`DataError` with a message naming the file, row and fix.
"""

from .bundle import DEMO_SENTENCES, DataBundle, build_datasets, demo_sentences_path, read_label_names
from .causal_lm import CausalLMDataset
from .chat_dataset import ChatDataset
from .chat_templates import BUILTIN_TEMPLATES, resolve_chat_template
from .checks import BadItem, CheckCancelled, DataCheck, check_data
from .collate import IGNORE_INDEX, MODEL_INPUTS, make_collate
from .digits import load_digits_tensors
from .errors import DataError
from .example_batch import EXAMPLE_BATCH, export_example_inputs
from .image_folder import ImageFolderDataset, check_image_file
from .kinds import KIND_TASKS, data_kind_problem, fitting_data_kinds
from .packing import PackedDataset, truncation_note
from .preview import (
    DataPreview,
    PreviewSample,
    RenderedPreview,
    RenderedSample,
    data_columns,
    preview_data,
    preview_rendered,
)
from .splits import split_dataset
from .table_files import empty_cells
from .text_classification import TextClassificationDataset

__all__ = [
    "BUILTIN_TEMPLATES",
    "ChatDataset",
    "RenderedPreview",
    "RenderedSample",
    "preview_rendered",
    "resolve_chat_template",
    "DEMO_SENTENCES",
    "EXAMPLE_BATCH",
    "IGNORE_INDEX",
    "KIND_TASKS",
    "MODEL_INPUTS",
    "BadItem",
    "CausalLMDataset",
    "CheckCancelled",
    "DataBundle",
    "DataCheck",
    "DataError",
    "DataPreview",
    "ImageFolderDataset",
    "PreviewSample",
    "TextClassificationDataset",
    "build_datasets",
    "check_data",
    "check_image_file",
    "data_kind_problem",
    "data_columns",
    "demo_sentences_path",
    "empty_cells",
    "export_example_inputs",
    "fitting_data_kinds",
    "load_digits_tensors",
    "make_collate",
    "preview_data",
    "read_label_names",
    "split_dataset",
    "PackedDataset",
    "truncation_note",
]
