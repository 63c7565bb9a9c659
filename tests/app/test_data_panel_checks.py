"""The data panel checks every file it counts, off the UI thread, and names the bad ones.

A folder with two classes, good PNGs, a zero-byte .png, a text file named .jpg and a JPEG
cut in half: the panel lists the three bad files with their reasons (core's check, run on a
worker thread), shows the good and bad counts, offers the bad-images choice bound to
``data.bad_images``, and its kind picker disables the kinds the model cannot train on.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from lora_studio.app.panels.data_panel import DataPanel
from lora_studio.app.state import data_check
from lora_studio.app.state.data_check import DataChecker
from lora_studio.app.state.session import StudioSession
from lora_studio.core import DataConfig, ModelConfig, RunConfig

BAD = ["a/notes.jpg: not an image", "a/zero.png: zero bytes", "b/cut.jpg: truncated"]


def make_messy_folder(root: Path) -> Path:
    """a: 3 good PNGs + zero.png (0 bytes) + notes.jpg (text); b: 2 good PNGs + whole.jpg + cut.jpg (truncated)."""
    for name, count in (("a", 3), ("b", 2)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 12), (50 * i, 90, 200)).save(root / name / f"{i}.png")
    noise = Image.effect_noise((48, 48), 80).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=95)
    jpeg = buffer.getvalue()
    (root / "b" / "whole.jpg").write_bytes(jpeg)
    (root / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "notes.jpg").write_text("a text file with an image's name")
    return root


def _panel(qtbot, config: RunConfig | None = None) -> DataPanel:
    panel = DataPanel(StudioSession(config))
    qtbot.addWidget(panel)
    panel.resize(900, 650)
    panel.show()
    qtbot.waitUntil(lambda: not panel.is_reading(), timeout=20_000)
    return panel


@pytest.fixture
def panel(qtbot):
    widget = _panel(qtbot)
    yield widget
    widget.wait_idle()


def _settle(qtbot, panel: DataPanel) -> None:
    qtbot.waitUntil(lambda: not panel.is_reading(), timeout=20_000)


def test_bad_files_are_listed_from_a_worker_thread(qtbot, panel: DataPanel, tmp_path, monkeypatch) -> None:
    root = make_messy_folder(tmp_path / "pets")
    threads: list[threading.Thread] = []
    real_check = data_check.check_data

    def recording_check(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_check(*args, **kwargs)

    monkeypatch.setattr(data_check, "check_data", recording_check)
    with qtbot.waitSignal(panel.checker.sig_checked, timeout=20_000) as blocker:
        assert panel.choose_path(str(root)) is None
    result = blocker.args[0]
    assert threads and all(t is not threading.main_thread() for t in threads)  # never on the UI thread
    assert result.data.train == str(root) and result.check.good == 6
    _settle(qtbot, panel)
    assert sorted(panel.bad_items()) == BAD
    assert panel.bad_list.isVisible()
    assert "Checked 9 images: 6 good, 3 bad: training would stop at the first one" in panel.check_label.text()
    assert panel.balance_chart.counts == {"a": 3, "b": 3}  # the readable images, what training reads
    # every bad file that has a tile among the samples is marked (no blank tiles)
    shown = [panel.sample_preview.thumbnails.item(i) for i in range(panel.sample_preview.thumbnails.count())]
    bad_paths = {str(root / line.split(":")[0]) for line in BAD}
    marked = [item for item in shown if item.data(Qt.ItemDataRole.UserRole) in bad_paths]
    assert marked and all(item.text().endswith("(bad)") for item in marked)
    assert all("(bad)" not in item.text() for item in shown if item not in marked)
    panel.grab().save(str(tmp_path / "data_checks.png"))


def test_the_bad_images_control_is_bound_to_the_config(qtbot, panel: DataPanel, tmp_path) -> None:
    root = make_messy_folder(tmp_path / "pets")
    panel.choose_path(str(root))
    _settle(qtbot, panel)
    combo = panel.bad_images_combo
    assert combo.isVisible() and [combo.itemData(i) for i in range(combo.count())] == ["error", "skip"]
    assert combo.currentData() == panel.session.config.data.bad_images == "error"
    generation = panel.checker._generation  # noqa: SLF001 - the test reads how many checks were started
    combo.setCurrentIndex(combo.findData("skip"))
    assert panel.session.config.data.bad_images == "skip"
    assert panel.session.training_copy().data.bad_images == "skip"
    assert "3 bad: training leaves them out (bad images: skip)" in panel.check_label.text()
    assert sorted(panel.bad_items()) == BAD
    assert panel.checker._generation == generation  # noqa: SLF001 - the same files: not checked again
    assert panel.session.try_update("data", bad_images="error") is None  # a change made elsewhere shows here
    assert combo.currentData() == "error"
    assert "training would stop at the first one" in panel.check_label.text()
    panel.session.try_update("data", kind="digits", train=None)
    _settle(qtbot, panel)
    assert not combo.isVisibleTo(panel) and not panel.bad_list.isVisibleTo(panel)  # only image folders have files


def test_check_again_after_fixing_the_files(qtbot, panel: DataPanel, tmp_path) -> None:
    root = make_messy_folder(tmp_path / "pets")
    panel.choose_path(str(root))
    _settle(qtbot, panel)
    assert len(panel.bad_items()) == 3
    for line in BAD:  # the user removes the bad files on disk, then asks for a new check
        (root / line.split(":")[0]).unlink()
    with qtbot.waitSignal(panel.checker.sig_checked, timeout=20_000):
        qtbot.mouseClick(panel.recheck_button, Qt.MouseButton.LeftButton)
    _settle(qtbot, panel)
    assert panel.bad_items() == [] and not panel.bad_list.isVisible()
    assert "Checked 6 images: 6 good, none bad." in panel.check_label.text()
    assert "6 readable images of 6" in panel.summary_label.text()


def test_table_rows_with_an_empty_text_or_label_are_named(qtbot, tmp_path) -> None:
    panel = _panel(qtbot, RunConfig(model=ModelConfig(source="demo", name="text")))
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngreat,good\n,bad\nfine,\nok,good\n")
    panel.choose_path(str(path))
    _settle(qtbot, panel)
    assert panel.bad_items() == ["reviews.csv, row 2: empty 'text'", "reviews.csv, row 3: empty 'label'"]
    assert "Checked 4 rows: 2 good, 2 with an empty cell: training refuses them" in panel.check_label.text()
    assert panel.balance_chart.counts == {"bad": 1, "good": 2}  # no class "" for the empty label
    assert not panel.bad_images_combo.isVisibleTo(panel)
    panel.wait_idle()


def test_an_older_check_never_overwrites_a_newer_one(qtbot, tmp_path) -> None:
    first = make_messy_folder(tmp_path / "first")
    second = tmp_path / "second"
    (second / "x").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(second / "x" / "only.png")
    checker = DataChecker()
    answers = []
    checker.sig_checked.connect(answers.append)
    checker.check(DataConfig(kind="image-folder", train=str(first)))
    newest = checker.check(DataConfig(kind="image-folder", train=str(second)))
    qtbot.waitUntil(lambda: not checker.is_checking(), timeout=20_000)
    checker.stop()
    qtbot.wait(50)  # let any queued answer of the first check arrive: it must be dropped
    assert [(a.generation, a.data.train, a.check.checked) for a in answers] == [(newest, str(second), 1)]


def test_kinds_that_do_not_fit_the_model_are_disabled_with_the_reason(qtbot) -> None:
    config = RunConfig(model=ModelConfig(source="torchvision", name="resnet18", weights="random"))
    panel = _panel(qtbot, config)
    items = panel.kind_combo.model()

    def enabled() -> dict[str, bool]:
        return {panel.kind_combo.itemData(i): items.item(i).isEnabled() for i in range(panel.kind_combo.count())}

    assert enabled() == {"image-folder": True, "text-classification": False, "causal-lm": False,
                         "torchvision": True, "digits": False}
    digits = items.item(panel.kind_combo.findData("digits"))
    assert "8×8" in digits.toolTip() and "torchvision:resnet18" in digits.toolTip()
    # the config still says digits (resnet18 was set by hand here): the panel says it does not fit
    assert "data.kind does not fit the model" in panel.error_label.text()
    panel.session.try_update("model", source="demo", name="text")  # another model: the choices follow
    assert [k for k, on in enabled().items() if on] == ["text-classification"]
    assert "sequence-classification" in items.item(panel.kind_combo.findData("image-folder")).toolTip()
    # a change of data.kind made by the session (the model-change rule) shows in the picker
    panel.session.set_config(RunConfig(model=ModelConfig(source="demo", name="digits"),
                                       data=DataConfig(kind="torchvision", train="MNIST")))
    assert panel.kind_combo.currentData() == "torchvision"
    assert enabled()["digits"] and not enabled()["text-classification"]
    _settle(qtbot, panel)
    panel.wait_idle()

