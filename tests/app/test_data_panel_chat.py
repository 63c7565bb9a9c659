"""The Data tab with a language model and chat data: the chat row (format, template, loss) edits the
config, and the first examples are shown as training renders them, the trained text highlighted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_studio.app.panels.data_panel import TRAINED_COLOUR, DataPanel
from lora_studio.app.state.session import StudioSession
from lora_studio.core import load_model
from lora_studio.core.run_config import ModelConfig

SHOTS = Path("/tmp/w2")


@pytest.fixture
def panel(qtbot) -> DataPanel:
    session = StudioSession()
    assert session.try_update("model", source="demo", name="story") is None
    session.set_loaded(load_model(ModelConfig(source="demo", name="story")))
    widget = DataPanel(session)
    qtbot.addWidget(widget)
    widget.resize(1100, 650)
    widget.show()
    qtbot.waitUntil(lambda: not widget.is_reading(), timeout=10_000)
    return widget


def _chat_file(path: Path) -> Path:
    rows = [{"messages": [{"role": "system", "content": "Answer like a pirate."},
                          {"role": "user", "content": f"Where is ship {i}?"},
                          {"role": "assistant", "content": f"Ship {i} be in the harbour, arr!"}]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_chat_rows_are_shown_rendered_with_the_trained_text_highlighted(qtbot, panel, tmp_path) -> None:
    assert panel.choose_path(str(_chat_file(tmp_path / "chat.jsonl"))) is None
    qtbot.waitUntil(lambda: not panel.is_reading() and panel.rendered_view.isVisible(), timeout=20_000)
    data = panel.session.config.data
    assert data.kind == "causal-lm" and panel.chat_row.isVisible()
    assert not panel.columns_row.isVisible()  # messages rows are read by their own fields: nothing to map
    html = panel.rendered_view.toHtml()
    assert "messages" in panel.rendered_view.toPlainText() and "chatml" in panel.rendered_view.toPlainText()
    assert "Ship 0 be in the harbour, arr!" in panel.rendered_view.toPlainText()
    assert TRAINED_COLOUR in html.lower() and "tokens trained" in panel.rendered_view.toPlainText()
    SHOTS.mkdir(exist_ok=True)
    panel.grab().save(str(SHOTS / "data_chat.png"))
    panel.loss_combo.setCurrentText("all")  # the user asks for the loss on every token
    assert panel.session.config.data.loss_on == "all"
    qtbot.waitUntil(lambda: not panel.is_reading() and "loss on all" in panel.rendered_view.toPlainText(),
                    timeout=20_000)


def test_a_bad_chat_row_is_named_in_place_of_the_rendered_view(qtbot, panel, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    panel.choose_path(str(path))
    shown = lambda: panel.rendered_view.toPlainText() + panel.error_label.text()  # noqa: E731
    qtbot.waitUntil(lambda: not panel.is_reading() and "bad.jsonl" in shown(), timeout=20_000)
    assert "row 1" in shown() and "assistant" in shown()
