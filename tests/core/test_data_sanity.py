"""Data that reads fine but would train or score wrongly is refused or warned about, by name.

One class (text or image folder), a validation class the training data lacks, an empty label
(never its own class), texts on both sides of train/validation; and images that break after
the check: with ``bad_images = "skip"`` a run goes on without them, with ``"error"`` the file
is named.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_data_checks import _noisy_jpeg_bytes
from test_data_errors import WordTokenizer, _csv

from lora_studio.core.data import (
    DataError,
    ImageFolderDataset,
    TextClassificationDataset,
    build_datasets,
    check_data,
    read_label_names,
)
from lora_studio.core.models import LoadedModel
from lora_studio.core.run_config import DataConfig


def _text_model() -> LoadedModel:
    return LoadedModel(model=torch.nn.Linear(2, 2), task="sequence-classification", forward_style="transformers",
                       tokenizer=WordTokenizer())


def _bundle(config: DataConfig):
    return build_datasets(config, _text_model(), read_label_names(config))


def test_a_single_class_is_refused_by_name(tmp_path) -> None:
    path = _csv(tmp_path / "one.csv", [("good film", "a"), ("fine film", "a"), ("nice", "a")])
    config = DataConfig(kind="text-classification", train=str(path))
    with pytest.raises(DataError, match=r"one\.csv \(column 'label'\) has only one class 'a'; a classifier needs "
                                        r"two or more"):
        read_label_names(config)
    # A label set of two, but training data of one class only, is refused as well.
    config = DataConfig(kind="text-classification", train=str(path), label_names=["a", "b"], validation_split=0)
    with pytest.raises(DataError, match=r"training data .*one\.csv has only one class 'a'"):
        build_datasets(config, _text_model(), read_label_names(config))
    with pytest.raises(DataError, match=r"data\.label_names has only one class 'a'"):
        read_label_names(DataConfig(kind="text-classification", train=str(path), label_names=["a"]))


def test_an_image_folder_with_one_class_is_refused(tmp_path) -> None:
    (tmp_path / "cats").mkdir()
    for i in range(3):
        Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(tmp_path / "cats" / f"{i}.png")
    with pytest.raises(DataError, match=r"image folder .* has only one class 'cats'; a classifier needs two or more"):
        read_label_names(DataConfig(kind="image-folder", train=str(tmp_path)))


def test_a_validation_class_missing_from_training_is_refused_naming_both_files(tmp_path) -> None:
    train = _csv(tmp_path / "train.csv", [("w1", "a"), ("w2", "b"), ("w3", "a")])
    val = _csv(tmp_path / "val.csv", [("v1", "a"), ("v2", "c"), ("v3", "b")])
    config = DataConfig(kind="text-classification", train=str(train), validation=str(val))
    with pytest.raises(DataError, match=r"class 'c' is in the validation data .*val\.csv but not in the training "
                                        r"data .*train\.csv"):
        _bundle(config)
    # The same with a label set that names 'c': the training data still has no example of it.
    config = DataConfig(kind="text-classification", train=str(train), validation=str(val),
                        label_names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"class 'c' is in the validation data"):
        _bundle(config)


def test_image_validation_class_missing_from_training_is_refused(tmp_path) -> None:
    for side, classes in (("train", ("a", "b")), ("val", ("a", "b", "c"))):
        for name in classes:
            (tmp_path / side / name).mkdir(parents=True)
            Image.new("RGB", (6, 6)).save(tmp_path / side / name / "0.png")
    config = DataConfig(kind="image-folder", train=str(tmp_path / "train"), validation=str(tmp_path / "val"),
                        image_size=4)
    loaded = LoadedModel(model=torch.nn.Linear(2, 2), task="image-classification", forward_style="pixels")
    with pytest.raises(DataError, match=r"class 'c' is in the validation data .*val but not in the training data"):
        build_datasets(config, loaded, read_label_names(config))


def test_an_empty_label_is_never_a_class(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngreat,a\nbad,b\nmeh,\nok,  \nfine,a\n")
    config = DataConfig(kind="text-classification", train=str(path))
    assert read_label_names(config) == ["a", "b"]  # no "" class
    with pytest.raises(DataError, match=r"d\.csv, row 3: empty 'label' \(and 1 more: rows 4\)"):
        _bundle(config)
    assert [(b.row, b.reason) for b in check_data(config).bad] == [(3, "empty 'label'"), (4, "empty 'label'")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": ""}\n{"text": "z", "label": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, row 2: empty 'label'"):
        TextClassificationDataset(jsonl, WordTokenizer(), ["a", "b"])


def test_texts_on_both_sides_of_train_and_validation_are_warned_about(tmp_path) -> None:
    train = _csv(tmp_path / "train.csv", [("a fine film", "a"), ("Bad  Film", "b"), ("other", "a"), ("more", "b")])
    val = _csv(tmp_path / "val.csv", [("bad film", "b"), ("new one", "a"), ("a fine film", "a")])
    bundle = _bundle(DataConfig(kind="text-classification", train=str(train), validation=str(val)))
    [warning] = bundle.warnings
    assert warning.startswith("2 training example(s) of ") and "train.csv" in warning and "val.csv" in warning
    assert "row 1: 'a fine film'" in warning
    clean = _csv(tmp_path / "clean.csv", [("new one", "a"), ("another", "b")])
    train2 = _csv(tmp_path / "train2.csv", [("x y", "a"), ("z w", "b")])
    config = DataConfig(kind="text-classification", train=str(train2), validation=str(clean))
    assert _bundle(config).warnings == []
    # A split off one file: the same sentence twice may land on both sides.
    rows = [(f"sentence {i % 10}", "ab"[i % 2]) for i in range(40)]
    split = _bundle(DataConfig(kind="text-classification", train=str(_csv(tmp_path / "dup.csv", rows)),
                               validation_split=0.25))
    assert any("appear in the validation split (the same text)" in w for w in split.warnings)


def _folder(root, jpeg: bytes):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.jpg").write_bytes(jpeg)
    return root


def test_an_image_cut_short_after_the_check_is_skipped_at_load_time_or_named(tmp_path) -> None:
    jpeg = _noisy_jpeg_bytes()
    root = _folder(tmp_path / "data", jpeg)
    to_tensor = lambda image: torch.zeros(3, 4, 4)  # noqa: E731 - the transform is not under test
    skipping = ImageFolderDataset(root, ["a", "b"], to_tensor, bad_images="skip")
    strict = ImageFolderDataset(root, ["a", "b"], to_tensor, bad_images="error")
    assert skipping.skipped == [] and len(skipping) == 4
    (root / "a" / "1.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a copy still running, a disk error ...
    with pytest.raises(DataError, match=r"unreadable image .*a/1\.jpg .*bad_images = 'skip'"):
        strict[1]
    example = skipping[1]  # the next readable image stands in; the run goes on
    assert example["labels"] == 1 and [p.name for p in skipping.skipped] == ["1.jpg"]
    assert all(skipping[i]["pixel_values"].shape == (3, 4, 4) for i in range(len(skipping)))
    assert len(skipping.skipped) == 1  # named once, not at every epoch


def test_a_truncated_jpeg_is_refused_or_skipped_when_the_run_is_built(tmp_path) -> None:
    jpeg = _noisy_jpeg_bytes()
    root = _folder(tmp_path / "data", jpeg)
    (root / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    loaded = LoadedModel(model=torch.nn.Linear(2, 2), task="image-classification", forward_style="pixels")
    config = DataConfig(kind="image-folder", train=str(root), image_size=4, validation_split=0)
    with pytest.raises(DataError, match=r"unreadable image .*b/cut\.jpg \(truncated\)"):
        build_datasets(config, loaded, read_label_names(config))
    config = DataConfig(kind="image-folder", train=str(root), image_size=4, validation_split=0, bad_images="skip")
    bundle = build_datasets(config, loaded, read_label_names(config))
    assert [p.rsplit("/", 1)[-1] for p in bundle.skipped] == ["cut.jpg"] and len(bundle.train) == 4
    batch = bundle.collate([bundle.train[i] for i in range(4)])  # step 1's batch: every image decodes
    assert batch["pixel_values"].shape == (4, 3, 4, 4)


def test_a_runs_data_warnings_reach_its_events(tmp_path) -> None:
    import dataclasses

    from lora_studio.core.demo import demo_config
    from lora_studio.core.training import TrainingWarning, train

    train_csv = _csv(tmp_path / "train.csv", [("a fine film", "a"), ("bad film", "b"), ("other", "a"), ("more", "b")])
    val_csv = _csv(tmp_path / "val.csv", [("bad film", "b"), ("new one", "a")])
    config = demo_config("text", output_dir=tmp_path / "run", steps=1)
    config = config.replace(
        data=dataclasses.replace(config.data, train=str(train_csv), validation=str(val_csv), validation_split=0.0),
        training=dataclasses.replace(config.training, eval_every=0, checkpoint_every=0, device="cpu", batch_size=2))
    events = []
    assert train(config, events.append).status == "finished"
    assert any(isinstance(e, TrainingWarning) and "val.csv" in e.message and "training example" in e.message
               for e in events)
