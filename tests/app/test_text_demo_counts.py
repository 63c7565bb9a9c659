"""The text demo's tree and counts describe the model its runs train: a head of 4 topics, as the
demo's sentences have, not the checkpoint's 2 (the counts were 770 parameters short)."""

from __future__ import annotations

from pathlib import Path

from studio_window import LOAD_TIMEOUT_MS, isolated_settings

from lora_studio.app.main_window import MainWindow
from lora_studio.core import count_parameters, demo_config, load_model, read_label_names
from lora_studio.core.training.setup import build_model

HIDDEN = 384  # MiniLM-L6's width: each class adds HIDDEN weights and one bias to the head


def test_the_windows_text_demo_tree_counts_what_training_builds(qtbot, tmp_path: Path) -> None:
    isolated_settings(tmp_path / "settings")
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    trees = []
    window.session.sig_tree_changed.connect(trees.append)
    with qtbot.waitSignal(window.session.sig_model_loaded, timeout=LOAD_TIMEOUT_MS * 3):
        window.model_panel.open_demo("text")
    session = window.session
    base, labels, _ = build_model(session.config, attach_adapter=False)  # what Start would train
    assert labels == read_label_names(session.config.data) and len(labels) == 4
    trained_total = count_parameters(base.model).total
    assert session.tree.total_parameters == trained_total
    assert count_parameters(session.loaded.model).total == trained_total
    assert session.loaded.num_classes == base.num_classes == 4
    assert trees and trees[0].total_parameters == trained_total  # the meta-device preview too


def test_the_text_demo_model_has_a_head_per_topic_without_data() -> None:
    config = demo_config("text", output_dir="unused")
    labels = read_label_names(config.data)
    meta = load_model(config.model, meta=True)  # as the window builds it: no data given
    sized = load_model(config.model, num_classes=len(labels), label_names=labels, meta=True)  # as a run does
    assert meta.num_classes == len(labels) == 4
    assert count_parameters(meta.model).total == count_parameters(sized.model).total
    two = load_model(config.model, num_classes=2, meta=True)  # a data set of 2 classes still sizes it
    assert count_parameters(meta.model).total - count_parameters(two.model).total == 2 * (HIDDEN + 1)
    assert meta.model.config.id2label == dict(enumerate(labels))
