"""Bad data gives a message that names the file, the row and the fix; good data comes out right."""

import json

import pytest
import torch

from lora_studio.core.data import (
    CausalLMDataset,
    DataError,
    ImageFolderDataset,
    TextClassificationDataset,
    build_datasets,
    read_label_names,
)
from lora_studio.core.data.collate import IGNORE_INDEX, make_collate
from lora_studio.core.data.splits import split_dataset
from lora_studio.core.models import LoadedModel
from lora_studio.core.run_config import DataConfig


class WordTokenizer:
    """A tokenizer stand-in: one id per word (stable), enough to check masking and packing."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, truncation=False, max_length=None, add_special_tokens=True):
        def encode(t):
            ids = [2 + sum(map(ord, w)) % 500 for w in t.split()]
            return ids[:max_length] if truncation and max_length else ids

        return {"input_ids": [encode(t) for t in text] if isinstance(text, list) else encode(text)}


def _csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    return path


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_label_names(DataConfig(kind="text-classification", train=str(tmp_path / "nope.csv")))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_label_names(DataConfig(kind="text-classification", train=str(tmp_path / "empty.csv")))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        read_label_names(DataConfig(kind="text-classification", train=str(tmp_path / "header.csv")))


def test_unknown_column_lists_the_columns(tmp_path) -> None:
    path = _csv(tmp_path / "d.csv", [("a b", "x")])
    with pytest.raises(DataError, match=r"unknown column 'sentence'; the columns are: text, label"):
        TextClassificationDataset(path, WordTokenizer(), ["x"], text_column="sentence")


def test_label_outside_the_label_set_names_the_row(tmp_path) -> None:
    path = _csv(tmp_path / "d.csv", [("a b", "cat"), ("c d", "dog"), ("e f", "cow")])
    with pytest.raises(DataError, match=r"row 3: label 'cow' is not in the label set \(cat, dog\)"):
        TextClassificationDataset(path, WordTokenizer(), ["cat", "dog"])


def test_jsonl_text_classification_with_column_mapping(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"sentence": f"w{i} x", "topic": i % 3}) for i in range(9)))
    config = DataConfig(kind="text-classification", train=str(path), text_column="sentence", label_column="topic")
    assert read_label_names(config) == ["0", "1", "2"]
    data = TextClassificationDataset(path, WordTokenizer(), ["0", "1", "2"], text_column="sentence",
                                     label_column="topic")
    assert [e["labels"] for e in data] == [i % 3 for i in range(9)]
    (tmp_path / "bad.jsonl").write_text('{"sentence": "a", "topic": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        read_label_names(DataConfig(kind="text-classification", train=str(tmp_path / "bad.jsonl"),
                                    label_column="topic"))


def _images(root, broken: bool):
    from PIL import Image

    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    if broken:
        (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")


def test_unreadable_image_is_refused_or_skipped_and_counted(tmp_path) -> None:
    _images(tmp_path, broken=True)
    to_tensor = lambda image: torch.zeros(3, 4, 4)  # noqa: E731 - the transform is not under test
    with pytest.raises(DataError, match=r"unreadable image .*broken\.png.*bad_images = 'skip'"):
        ImageFolderDataset(tmp_path, ["a", "b"], to_tensor, bad_images="error")
    data = ImageFolderDataset(tmp_path, ["a", "b"], to_tensor, bad_images="skip")
    assert len(data) == 6 and [p.name for p in data.skipped] == ["broken.png"]
    assert sorted(e["labels"] for e in data) == [0, 0, 0, 1, 1, 1]


def test_more_classes_than_the_head_is_refused(tmp_path) -> None:
    _images(tmp_path, broken=False)
    (tmp_path / "c").mkdir()
    from PIL import Image

    Image.new("RGB", (6, 6)).save(tmp_path / "c" / "0.png")
    config = DataConfig(kind="image-folder", train=str(tmp_path), image_size=8)
    labels = read_label_names(config)
    assert labels == ["a", "b", "c"]
    loaded = LoadedModel(model=torch.nn.Linear(2, 2), task="image-classification", forward_style="pixels",
                         num_classes=2)
    with pytest.raises(DataError, match="the data has 3 classes but the model's head has 2 outputs"):
        build_datasets(config, loaded, labels)


def test_prompt_is_masked_and_packing_fills_blocks(tmp_path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"q": "what is two", "a": f"it is {i} ok"}) for i in range(10)))
    data = CausalLMDataset(path, WordTokenizer(), prompt_column="q", response_column="a", max_length=64)
    first = data[0]
    assert first["labels"][:3] == [IGNORE_INDEX] * 3  # the three prompt words take no loss
    assert first["labels"][3:] == first["input_ids"][3:] and first["input_ids"][-1] == WordTokenizer.eos_token_id
    packed = CausalLMDataset(path, WordTokenizer(), prompt_column="q", response_column="a", max_length=8,
                             packing=True)
    assert all(len(e["input_ids"]) == 8 for e in packed)
    assert len(packed) == (10 * 8) // 8  # 8 tokens per example (3 prompt + 4 answer + end)
    batch = make_collate(0)([data[0], packed[0]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_plain_text_paragraphs_and_too_little_text(tmp_path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("one two three\n\nfour five\n\n\n")
    assert len(CausalLMDataset(path, WordTokenizer(), max_length=16)) == 2
    packed = CausalLMDataset(path, WordTokenizer(), max_length=64, packing=True)  # less than a block: one row
    assert len(packed) == 1 and packed[0]["position_ids"] == [0, 1, 2, 3, 0, 1, 2]  # positions restart per example


def test_seeded_split_is_reproducible_and_disjoint() -> None:
    data = list(range(50))
    train_a, val_a = split_dataset(data, 0.2, seed=3)
    train_b, val_b = split_dataset(data, 0.2, seed=3)
    assert list(val_a) == list(val_b) and len(val_a) == 10
    assert set(train_a).isdisjoint(val_a) and len(train_a) + len(val_a) == 50
    assert list(split_dataset(data, 0.2, seed=4)[1]) != list(val_a)


def test_torchvision_dataset_offline_and_absent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = DataConfig(kind="torchvision", train="MNIST", root=str(tmp_path))
    with pytest.raises(DataError, match=r"MNIST is not in .* this process is offline"):
        read_label_names(config)
    with pytest.raises(DataError, match="torchvision has no dataset 'MNISTT'"):
        read_label_names(DataConfig(kind="torchvision", train="MNISTT", root=str(tmp_path)))
