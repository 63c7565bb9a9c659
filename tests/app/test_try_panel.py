"""The Try tab as a user sees it: what it shows equals core's predict/generate for the same input
(base and adapted), rows whose top label changed are marked without colour, images show as
thumbnails, the two text views grow and Stop ends them, a paused run in the window is tried, the
empty tab says what to do, errors are readable lines, and the window offers every demo."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from short_runs import short_digits
from studio_window import open_digits_window
from test_try_models import TEXTS, digit_images, digits_model, nudged, story_model, text_model

from lora_studio.app.panels.try_panel import CLASSIFY_PAGE, EMPTY_PAGE, GENERATE_PAGE, TryPanel
from lora_studio.app.state.session import StudioSession
from lora_studio.app.state.try_sources import LIVE
from lora_studio.app.widgets.prediction_table import (
    ADAPTED,
    BASE,
    CHANGED,
    CHANGED_MARK,
    INPUT,
    format_scores,
    format_side,
)
from lora_studio.core import DEMOS, GenerationSettings, LoadedModel, generate_text, predict

TIMEOUT_MS = 60_000


@pytest.fixture
def panel(qtbot):
    widget = TryPanel(StudioSession())
    qtbot.addWidget(widget)
    widget.resize(900, 640)
    widget.show()
    yield widget
    assert widget.wait_idle(TIMEOUT_MS)


def _page(panel: TryPanel) -> int:
    return next(i for i, page in enumerate(panel.pages._pages) if page.isVisible())


def _run_and_wait_for_table(qtbot, panel: TryPanel) -> None:
    with qtbot.waitSignal(panel.runner.sig_predictions, timeout=TIMEOUT_MS):
        qtbot.mouseClick(panel.classify_run, Qt.MouseButton.LeftButton)


def _assert_table_shows(panel: TryPanel, expected) -> None:
    """Each row shows the core function's top-k for both sides, and the change mark where the top label changed."""
    table = panel.table
    assert table.rowCount() == len(expected)
    for row, want in enumerate(expected):
        assert table.item(row, INPUT).data(Qt.ItemDataRole.UserRole) == want.input
        assert table.cell_text(row, ADAPTED) == format_scores(want.adapted)
        assert table.cell_text(row, BASE) == format_scores(want.base)
        assert (table.cell_text(row, CHANGED) == CHANGED_MARK) == want.changed
    for got, want in zip(table.predictions, expected, strict=True):
        for side in ("adapted", "base"):
            assert [s.label for s in getattr(got, side)] == [s.label for s in getattr(want, side)]
            for a, b in zip(getattr(got, side), getattr(want, side), strict=True):
                assert a.probability == pytest.approx(b.probability, abs=1e-6)


def test_the_empty_tab_says_what_to_do(panel) -> None:
    assert _page(panel) == EMPTY_PAGE and panel.empty_label.isVisible()
    assert "Train a run, pause it, or open an adapter folder" in panel.empty_label.text()
    assert "Nothing to try yet" in panel.source_label.text() and not panel.source_combo.isEnabled()


def test_a_text_classifier_shows_core_predictions_for_both_sides(qtbot, panel) -> None:
    loaded = text_model()
    panel.runner.try_model(loaded, "MiniLM with a nudged adapter")
    assert _page(panel) == CLASSIFY_PAGE and panel.inputs_edit.isVisible() and not panel.image_bar.isVisible()
    line = panel.source_label.text()
    assert "MiniLM with a nudged adapter" in line and "text classifier" in line
    assert panel.source_combo.currentText().startswith("MiniLM with a nudged adapter")
    panel.inputs_edit.setPlainText("\n".join(TEXTS[:2]) + "\n\n   \n" + "\n".join(TEXTS[2:]))  # blank lines skipped
    panel.top_k.setValue(2)
    _run_and_wait_for_table(qtbot, panel)
    _assert_table_shows(panel, predict(loaded, TEXTS, top_k=2))
    changed = [i for i, p in enumerate(panel.table.predictions) if p.changed]
    assert panel.table.changed_rows() == changed
    assert f"changed for {len(changed)}" in panel.status_label.text() if changed else "same top label" in \
        panel.status_label.text()


def test_images_show_as_thumbnails_with_both_sides(qtbot, panel, tmp_path) -> None:
    loaded = digits_model()
    panel.runner.try_model(loaded, "Digits")
    assert panel.image_bar.isVisible() and not panel.inputs_edit.isVisible()
    folder = tmp_path / "digits"
    images = digit_images(folder, "0123456789")
    assert panel.handle_drop([str(folder)]) == "10 images added"  # a dropped folder: its images
    assert panel.table.rowCount() == 10 and not panel.table.item(0, INPUT).icon().isNull()
    _run_and_wait_for_table(qtbot, panel)
    _assert_table_shows(panel, predict(loaded, images, top_k=3))
    assert all(not panel.table.item(row, INPUT).icon().isNull() for row in range(10))
    for row in panel.table.changed_rows():  # the mark is text; the tint only repeats it
        assert panel.table.item(row, ADAPTED).background().color().name() != "#000000"


def test_a_bad_image_is_a_readable_notice(qtbot, panel, tmp_path) -> None:
    panel.runner.try_model(digits_model(), "Digits")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    panel.add_images([bad])
    with qtbot.waitSignal(panel.runner.sig_error, timeout=TIMEOUT_MS):
        panel.classify_run.click()
    assert panel.notice.isVisible() and "broken.png" in panel.notice.text()
    assert "Traceback" not in panel.notice.text()


def test_a_causal_lm_grows_both_views_and_ends_as_core_generates(qtbot, panel) -> None:
    loaded = story_model()
    panel.runner.try_model(loaded, "Story demo")
    assert _page(panel) == GENERATE_PAGE
    assert panel.chat_template.isHidden()  # the story tokenizer has no chat template
    panel.prompt_edit.setPlainText("Once upon a time")
    panel.max_new_tokens.setValue(12)
    panel.temperature.setValue(0.0)
    panel.seed.setValue(5)
    settings = panel.generation_settings()
    assert settings == GenerationSettings(max_new_tokens=12, temperature=0.0, top_p=panel.top_p.value(), seed=5)
    grew = []
    panel.runner.sig_pieces.connect(lambda _pieces: grew.append(len(panel.generation.text("adapted"))))
    with qtbot.waitSignal(panel.runner.sig_generation_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(panel.generate_run, Qt.MouseButton.LeftButton)
    expected = generate_text(loaded, "Once upon a time", settings)
    assert panel.generation.text("base") == expected["base"]
    assert panel.generation.text("adapted") == expected["adapted"]
    assert grew == sorted(grew)  # the view only ever grew
    assert "done" in panel.generation.titles["base"].text() and panel.status_label.text().startswith("Done")


def test_stop_ends_the_generation_and_keeps_its_text(qtbot, panel) -> None:
    panel.runner.try_model(story_model(), "Story demo")
    panel.prompt_edit.setPlainText("Once upon a time")
    panel.max_new_tokens.setValue(400)
    panel.temperature.setValue(1.0)
    with qtbot.waitSignal(panel.runner.sig_generation_finished, timeout=TIMEOUT_MS) as finished:
        panel.generate_run.click()
        qtbot.waitUntil(lambda: panel.generation.pieces_shown("adapted") >= 2, timeout=TIMEOUT_MS)
        assert panel.generate_stop.isEnabled()
        qtbot.mouseClick(panel.generate_stop, Qt.MouseButton.LeftButton)
    assert finished.args[0].stopped
    assert "stopped" in panel.generation.titles["adapted"].text()
    assert panel.generation.text("adapted") == finished.args[0].texts["adapted"]
    assert panel.generation.pieces_shown("adapted") < 400 and not panel.generate_stop.isEnabled()


def test_the_window_tries_a_paused_run_and_offers_every_demo(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tabs = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    assert tabs[:2] == ["Train", "Try"]
    menu_demos = [a.text() for a in window.findChildren(type(window.export_action)) if a.text().startswith("Open the")]
    assert menu_demos == [f"Open the {name} demo" for name in DEMOS]
    combo = window.model_panel.demo_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(DEMOS)
    tab = window.try_panel
    controller = window.run_panel.controller
    try:
        window.run_panel.start_run(short_digits(tmp_path / "run", steps=400, eval_every=0))
        qtbot.waitUntil(lambda: controller.live_model is not None and controller.live_model.step >= 3,
                        timeout=TIMEOUT_MS)
        window.run_panel.toggle_pause()
        window.tabs.setCurrentWidget(tab)
        qtbot.waitUntil(lambda: "paused at step" in tab.source_label.text(), timeout=TIMEOUT_MS)
        assert tab.runner.current().kind == LIVE and tab.source_combo.currentText().startswith("Live run")
        images = digit_images(tmp_path / "digits", "2468")
        tab.add_images(images)
        _run_and_wait_for_table(qtbot, tab)
        with controller.live_model.borrow() as parts:  # still paused: the weights the tab tried
            expected = predict(parts.loaded, images, top_k=3, device=parts.device, autocast=parts.autocast)
        _assert_table_shows(tab, expected)
        assert f"at step {parts.step}" in tab.status_label.text()
        with qtbot.waitSignal(controller.sig_run_finished, timeout=TIMEOUT_MS):
            window.run_panel.stop()
        qtbot.waitUntil(lambda: tab.source_combo.currentText().startswith("Finished run"), timeout=TIMEOUT_MS)
    finally:
        window.run_panel.stop_and_wait(TIMEOUT_MS)
        assert tab.wait_idle(TIMEOUT_MS)
    assert Path(tab.runner.current().folder).name == "run"


def test_the_window_still_fits_1280x720_with_each_try_page(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.setWindowState(Qt.WindowState.WindowNoState)
    window.resize(1280, 720)
    window.tabs.setCurrentWidget(window.try_panel)
    runner = window.try_panel.runner
    pages = ((story_model(), GENERATE_PAGE), (digits_model(), CLASSIFY_PAGE), (text_model(), CLASSIFY_PAGE))
    for loaded, page in pages:
        runner.try_model(loaded, "a model")
        qtbot.wait(20)
        assert _page(window.try_panel) == page
        hint = window.minimumSizeHint()
        assert hint.width() <= 1280 and hint.height() <= 720, (page, hint)
        assert (window.width(), window.height()) == (1280, 720)
    window.try_panel.grab().save(str(tmp_path / "try.png"))


class _Custom(torch.nn.Module):
    """A custom factory model: its own preprocess (a text's letter counts), four unnamed outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(26, 4)

    def studio_preprocess(self, items: list) -> torch.Tensor:
        return torch.stack([torch.bincount(torch.tensor([ord(c) - 97 for c in s.lower() if c.isalpha() and
                                                         c.isascii()] or [0]), minlength=26)[:26].float()
                            for s in items])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_custom_model_without_labels_shows_its_raw_outputs(qtbot, panel) -> None:
    loaded = nudged(LoadedModel(model=_Custom(), task="sequence-classification", forward_style="pixels"), ["body"],
                    scale=2.0)
    panel.runner.try_model(loaded, "A factory model")
    panel.inputs_edit.setPlainText("\n".join(TEXTS))
    _run_and_wait_for_table(qtbot, panel)
    expected = predict(loaded, TEXTS, top_k=3)
    assert all(p.adapted_raw is not None and p.base_raw is not None for p in expected)
    table = panel.table
    for row, want in enumerate(expected):
        assert table.cell_text(row, ADAPTED) == format_side(want.adapted, want.adapted_raw)
        assert table.cell_text(row, BASE) == format_side(want.base, want.base_raw)
        if not want.adapted:
            assert table.cell_text(row, ADAPTED).startswith(f"shape 4 · argmax {want.adapted_raw.argmax}")
            assert (table.cell_text(row, CHANGED) == CHANGED_MARK) == (want.adapted_raw.argmax != want.base_raw.argmax)


def test_the_chat_template_box_shows_only_for_a_tokenizer_with_one(qtbot, panel) -> None:
    plain = story_model()
    tokenizer = copy.deepcopy(plain.tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    chat = dataclasses.replace(plain, tokenizer=tokenizer)
    panel.runner.try_model(chat, "Story demo with a chat template")
    assert not panel.chat_template.isHidden() and panel.chat_template.isChecked()
    panel.chat_template.setChecked(False)
    assert panel.generation_settings().chat_template is False
    panel.runner.try_model(plain, "Story demo")
    assert panel.chat_template.isHidden() and panel.generation_settings().chat_template is True
