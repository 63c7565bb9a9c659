"""The Data tab as a user drives it: pick a file or folder, map columns, read the preview and the balance."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.app.panels.data_panel import DataPanel
from lora_studio.app.state.session import StudioSession
from lora_studio.core import demo_sentences_path


@pytest.fixture
def panel(qtbot) -> DataPanel:
    widget = DataPanel(StudioSession())
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    qtbot.waitUntil(lambda: not widget.is_reading(), timeout=10_000)
    return widget


def _settle(qtbot, panel: DataPanel) -> None:
    qtbot.waitUntil(lambda: not panel.is_reading(), timeout=10_000)


def _text_model(panel: DataPanel) -> None:
    """Text data needs a text model: the kind picker follows the model's task."""
    assert panel.session.try_update("model", source="demo", name="text") is None


def _csv_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_demo_sentences_preview_and_balance(qtbot, panel: DataPanel, tmp_path: Path) -> None:
    _text_model(panel)
    path = demo_sentences_path()
    assert panel.choose_path(path) is None
    _settle(qtbot, panel)
    rows = _csv_rows(path)
    assert panel.session.config.data.kind == "text-classification"
    assert panel.error_label.text() == ""
    assert panel.sample_preview.rows() == [(r["text"], r["label"]) for r in rows[: len(panel.sample_preview.rows())]]
    assert len(panel.sample_preview.rows()) == 8
    assert panel.balance_chart.counts == dict(sorted(Counter(r["label"] for r in rows).items()))
    assert f"{len(rows)} samples" in panel.summary_label.text()
    panel.grab().save(str(tmp_path / "data_text.png"))


def test_columns_are_mapped_from_the_header(qtbot, panel: DataPanel, tmp_path: Path) -> None:
    _text_model(panel)
    path = tmp_path / "reviews.csv"
    path.write_text("id,review,stars\n1,great phone,good\n2,broke in a day,bad\n3,works,good\n")
    panel.choose_path(str(path))
    _settle(qtbot, panel)
    data = panel.session.config.data
    assert (data.text_column, data.label_column) == ("review", "stars")  # guessed from the names
    assert [panel.text_combo.itemText(i) for i in range(panel.text_combo.count())] == ["id", "review", "stars"]
    assert panel.sample_preview.rows() == [("great phone", "good"), ("broke in a day", "bad"), ("works", "good")]
    assert panel.balance_chart.counts == {"bad": 1, "good": 2}
    panel.text_combo.setCurrentText("id")  # the user maps the text column by hand
    _settle(qtbot, panel)
    assert panel.session.config.data.text_column == "id"
    assert panel.sample_preview.rows()[0] == ("1", "good")


def test_missing_column_and_unknown_label_show_their_message(qtbot, panel: DataPanel) -> None:
    _text_model(panel)
    panel.choose_path(demo_sentences_path())
    _settle(qtbot, panel)
    assert panel.session.try_update("data", label_column="topic") is None
    _settle(qtbot, panel)
    assert "unknown column 'topic'; the columns are: text, label" in panel.error_label.text()
    assert panel.error_label.isVisible() and panel.balance_chart.counts == {}
    panel.label_combo.setCurrentText("label")
    _settle(qtbot, panel)
    assert panel.error_label.text() == ""
    panel.session.try_update("data", label_names=["food", "sports", "technology"])
    _settle(qtbot, panel)
    assert "label 'weather' is not in the label set (food, sports, technology)" in panel.error_label.text()


def test_image_folder_thumbnails_and_balance(qtbot, panel: DataPanel, tmp_path: Path) -> None:
    root = tmp_path / "pets"
    made = {"cat": 3, "dog": 2, "owl": 1}
    for name, count in made.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32 + 8 * i, 24), (40 * i, 120, 200)).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    panel.choose_path(str(root))
    _settle(qtbot, panel)
    assert panel.session.config.data.kind == "image-folder"
    counted = {d.name: sum(1 for f in d.iterdir() if f.suffix == ".png") for d in sorted(root.iterdir()) if d.is_dir()}
    assert panel.balance_chart.counts == counted == made
    # one of each class first, then the second round
    assert panel.sample_preview.thumbnail_captions() == ["cat", "dog", "owl", "cat", "dog", "cat"]
    icons = [panel.sample_preview.thumbnails.item(i).icon() for i in range(6)]
    assert all(not icon.isNull() for icon in icons)
    panel.session.try_update("data", label_names=["cat", "dog"])
    _settle(qtbot, panel)
    assert "class folder(s) owl that are not in the label set (cat, dog)" in panel.error_label.text()


def test_digits_demo_shows_its_images(qtbot, panel: DataPanel) -> None:
    assert panel.session.config.data.kind == "digits"
    assert len(panel.sample_preview.thumbnail_captions()) == 8
    assert sum(panel.balance_chart.counts.values()) == 1797 and len(panel.balance_chart.counts) == 10


def test_a_path_that_does_not_exist(qtbot, panel: DataPanel, tmp_path: Path) -> None:
    panel.path_edit.setText(str(tmp_path / "nope.csv"))
    panel.path_edit.editingFinished.emit()
    _settle(qtbot, panel)
    assert f"data file {tmp_path / 'nope.csv'} does not exist" in panel.error_label.text()
