"""The one data check: the window's panel and the engine name the same bad files and rows.

A folder with good PNGs, a zero-byte .png, a text file named .jpg and a JPEG cut in half:
``check_image_file`` names each bad one with its reason, ``check_data`` lists them with the
good count, and the dataset drops exactly those with ``bad_images="skip"`` (and refuses the
first, by name, with ``"error"``).  Tables: rows with an empty text or label are named by
row number, and training refuses them with the same row numbers.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_data_errors import WordTokenizer

from lora_studio.core import (
    DataCheck,
    ModelConfig,
    check_data,
    check_image_file,
    data_kind_problem,
    fitting_data_kinds,
    preview_data,
)
from lora_studio.core.data import CheckCancelled, DataError, ImageFolderDataset, TextClassificationDataset, empty_cells
from lora_studio.core.data.table_files import read_rows
from lora_studio.core.run_config import DataConfig

BAD = {"a/zero.png": "zero bytes", "a/notes.jpg": "not an image", "b/cut.jpg": "truncated"}


def _noisy_jpeg_bytes() -> bytes:
    """A JPEG large enough that cutting it in half leaves a readable header and missing scans."""
    torch.manual_seed(0)
    pixels = (torch.rand(48, 48, 3) * 255).byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_messy_folder(root: Path) -> Path:
    """Two classes (a: 3 good PNGs, b: 2 good PNGs + 1 good JPEG) and the three bad files of BAD."""
    for name, count in (("a", 3), ("b", 2)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (10, 10), (40 * i, 90, 200)).save(root / name / f"{i}.png")
    jpeg = _noisy_jpeg_bytes()
    (root / "b" / "whole.jpg").write_bytes(jpeg)
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "notes.jpg").write_text("this is a text file, not a photo")
    (root / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return root


def test_the_image_check_names_zero_byte_non_image_and_truncated_files(tmp_path) -> None:
    root = make_messy_folder(tmp_path)
    assert {rel: check_image_file(root / rel) for rel in BAD} == BAD
    assert check_image_file(root / "b" / "whole.jpg") is None
    assert check_image_file(root / "a" / "0.png") is None
    # A truncated JPEG passes PIL's verify(): the check must decode it to find it.
    with Image.open(root / "b" / "cut.jpg") as image:
        image.verify()


def test_check_data_lists_every_bad_file_with_the_good_counts(tmp_path) -> None:
    root = make_messy_folder(tmp_path)
    check = check_data(DataConfig(kind="image-folder", train=str(root)))
    assert isinstance(check, DataCheck)
    assert check.checked == 9 and check.good == 6
    assert {str(Path(b.path).relative_to(root)): b.reason for b in check.bad} == BAD
    assert check.good_counts == {"a": 3, "b": 3}
    assert {b.label for b in check.bad} == {"a", "b"}
    assert all(b.describe().startswith(b.path) for b in check.bad)
    # The preview (no decoding) still counts every file; the check is what says which are bad.
    assert preview_data(DataConfig(kind="image-folder", train=str(root))).total == 9


def test_skip_drops_exactly_the_bad_files_and_error_names_the_first(tmp_path) -> None:
    root = make_messy_folder(tmp_path)
    to_tensor = lambda image: torch.zeros(3, 4, 4)  # noqa: E731 - the transform is not under test
    with pytest.raises(DataError, match=r"unreadable image .*a/notes\.jpg \(not an image\).*bad_images = 'skip'"):
        ImageFolderDataset(root, ["a", "b"], to_tensor, bad_images="error")
    data = ImageFolderDataset(root, ["a", "b"], to_tensor, bad_images="skip")
    check = check_data(DataConfig(kind="image-folder", train=str(root)))
    assert sorted(map(str, data.skipped)) == sorted(b.path for b in check.bad)
    assert {str(p.relative_to(root)): r for p, r in data.skip_reasons.items()} == BAD
    assert len(data) == check.good == 6
    assert all(data[i]["pixel_values"].shape == (3, 4, 4) for i in range(len(data)))  # every kept file loads


def test_a_truncated_jpeg_alone_is_refused_by_name_or_skipped(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    jpeg = _noisy_jpeg_bytes()
    (tmp_path / "a" / "good.jpg").write_bytes(jpeg)
    (tmp_path / "a" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg \(truncated\)"):
        ImageFolderDataset(tmp_path, ["a"], lambda image: image, bad_images="error")
    data = ImageFolderDataset(tmp_path, ["a"], lambda image: image, bad_images="skip")
    assert [p.name for p in data.skipped] == ["cut.jpg"] and len(data) == 1


def test_table_rows_with_an_empty_text_or_label_are_named(tmp_path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngreat,good\n,bad\nfine,\nok,good\n   ,bad\n")
    rows = read_rows(path)
    assert empty_cells(rows, ["text", "label"]) == [(2, "text"), (3, "label"), (5, "text")]
    check = check_data(DataConfig(kind="text-classification", train=str(path)))
    assert check.checked == 5 and check.good == 2
    assert [(b.row, b.reason) for b in check.bad] == [(2, "empty 'text'"), (3, "empty 'label'"), (5, "empty 'text'")]
    assert all(b.path == str(path) for b in check.bad)
    # The preview shows the data without inventing a class "" for the empty label ...
    preview = preview_data(DataConfig(kind="text-classification", train=str(path)))
    assert preview.label_counts == {"bad": 2, "good": 2}
    # ... and training refuses the same rows, naming the first and counting the rest.
    with pytest.raises(DataError, match=r"reviews\.csv, row 2: empty 'text' \(and 2 more: rows 3, 5\)"):
        TextClassificationDataset(path, WordTokenizer(), ["bad", "good"])


def test_causal_lm_rows_with_an_empty_response_are_named(tmp_path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text('{"q": "hi", "a": "hello"}\n{"q": "bye", "a": ""}\n')
    config = DataConfig(kind="causal-lm", train=str(path), prompt_column="q", response_column="a")
    check = check_data(config)
    assert [(b.row, b.reason) for b in check.bad] == [(2, "empty 'a'")]
    assert preview_data(config).total == 1  # the preview leaves the row out; training would refuse it
    from lora_studio.core.data import CausalLMDataset

    with pytest.raises(DataError, match=r"chat\.jsonl, row 2: empty 'a'"):
        CausalLMDataset(path, WordTokenizer(), prompt_column="q", response_column="a")


def test_a_check_can_be_cancelled_between_files(tmp_path) -> None:
    root = make_messy_folder(tmp_path)
    with pytest.raises(CheckCancelled):
        check_data(DataConfig(kind="image-folder", train=str(root)), cancelled=lambda: True)
    assert check_data(DataConfig(kind="digits")).bad == ()


def test_data_kinds_follow_the_model_task() -> None:
    digits = ModelConfig(source="demo", name="digits")
    resnet = ModelConfig(source="torchvision", name="resnet18", weights="random")
    minilm = ModelConfig(source="transformers", name="sentence-transformers/all-MiniLM-L6-v2",
                         task="sequence-classification")
    gpt = ModelConfig(source="transformers", name="sshleifer/tiny-gpt2", task="causal-lm")
    assert fitting_data_kinds(digits) == ["image-folder", "torchvision", "digits"]
    assert fitting_data_kinds(resnet) == ["image-folder", "torchvision"]
    assert "8×8" in data_kind_problem("digits", resnet)
    assert fitting_data_kinds(minilm) == ["text-classification"]
    assert "sequence-classification" in data_kind_problem("image-folder", minilm)
    assert fitting_data_kinds(gpt) == ["causal-lm"]
    # a loaded model's task wins over a config that leaves it out
    bare = ModelConfig(source="transformers", name="some/model")
    assert len(fitting_data_kinds(bare)) == 4  # unknown task: anything but the digits demo
    assert fitting_data_kinds(bare, "causal-lm") == ["causal-lm"]
