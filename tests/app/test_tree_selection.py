"""The layer tree drives config.lora: filter, tick/untick, quick selections, per-layer rank.

Counts are checked against a real property: the panel's figures equal ``count_parameters`` of a
copy of the model with the session's adapter attached.
"""

from __future__ import annotations

import copy

from PySide6.QtCore import Qt
from studio_window import open_digits_window

from lora_studio.app.state.target_selection import pattern_key, quick_selection, targets_for
from lora_studio.app.widgets.layer_tree_model import NAME_ROLE
from lora_studio.core import LoraConfig, attach, count_parameters, describe


def _attached_counts(window):
    model = copy.deepcopy(window.session.loaded.model)
    attach(model, window.session.training_lora())
    return count_parameters(model)


def _assert_counts_match(window) -> None:
    window.counts_panel.wait_until_current()
    estimate = window.counts_panel.estimate
    real = _attached_counts(window)
    assert (estimate.total, estimate.trainable, estimate.adapter) == (real.total, real.trainable, real.adapter)
    assert window.counts_panel.trainable_label.text().startswith(f"{real.trainable:,} ")


def _click_check(window, name: str) -> None:
    """Click a layer's check box the way the view does: through the proxy model."""
    tree = window.layer_tree
    index = tree.proxy.mapFromSource(tree.model.index_of(name))
    state = tree.proxy.data(index, Qt.ItemDataRole.CheckStateRole)
    flipped = Qt.CheckState.Unchecked if state == Qt.CheckState.Checked else Qt.CheckState.Checked
    assert tree.proxy.setData(index, flipped, Qt.ItemDataRole.CheckStateRole)


def test_demo_opens_with_its_targets_ticked_and_head_trained_fully(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tree = window.layer_tree
    assert tree.ticked_layers() == ["conv1", "conv2", "fc1"]
    assert window.session.config.lora.targets == ["conv1", "conv2", "fc1"]
    head = tree.model.index_of("fc2")
    assert not tree.model.flags(head) & Qt.ItemFlag.ItemIsUserCheckable  # the head trains fully
    assert "trained fully" in tree.model.data(head, Qt.ItemDataRole.ToolTipRole)
    pool = tree.model.index_of("pool")
    assert "cannot carry LoRA" in tree.model.data(pool, Qt.ItemDataRole.ToolTipRole)
    assert window.session.is_valid()
    _assert_counts_match(window)


def test_regex_filter_counts_and_shows_matches(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tree = window.layer_tree
    tree.regex_box.setChecked(True)
    qtbot.keyClicks(tree.filter_edit, r"conv\d|fc1")
    assert tree.matches == ["conv1", "conv2", "fc1"]
    assert tree.match_label.text().startswith("3 layers match: conv1, conv2, fc1")
    shown = [tree.proxy.index(r, 0).data(NAME_ROLE) for r in range(tree.proxy.rowCount())]
    assert shown == ["conv1", "conv2", "fc1"]
    tree.filter_edit.setText("conv[")
    assert "not a valid regex" in tree.match_label.text()
    tree.regex_box.setChecked(False)
    tree.filter_edit.setText("FC")  # plain text: case-insensitive substring
    assert tree.matches == ["fc1", "fc2"]


def test_ticking_writes_targets_and_moves_the_counts(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    window.counts_panel.wait_until_current()
    before = window.counts_panel.estimate.trainable
    _click_check(window, "conv2")  # untick
    assert window.session.config.lora.targets == ["conv1", "fc1"]
    window.counts_panel.wait_until_current()
    assert window.counts_panel.estimate.trainable < before
    _assert_counts_match(window)
    _click_check(window, "conv2")  # tick again
    assert window.session.config.lora.targets == ["conv1", "conv2", "fc1"]
    window.counts_panel.wait_until_current()
    assert window.counts_panel.estimate.trainable == before
    _assert_counts_match(window)


def test_quick_selections_and_none_blocks_start(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tree = window.layer_tree
    qtbot.mouseClick(tree.quick_buttons["none"], Qt.MouseButton.LeftButton)
    assert tree.ticked_layers() == []
    assert not window.session.is_valid() and "match" in window.session.config_error
    qtbot.mouseClick(tree.quick_buttons["all-linear"], Qt.MouseButton.LeftButton)
    assert tree.ticked_layers() == ["fc1"]  # fc2 is the head: trained fully, never adapted
    assert window.session.is_valid()
    qtbot.mouseClick(tree.quick_buttons["mlp"], Qt.MouseButton.LeftButton)
    assert tree.ticked_layers() == ["fc1"]
    tree.regex_box.setChecked(True)
    tree.filter_edit.setText("conv")
    tree.tick_matches()
    assert tree.ticked_layers() == ["conv1", "conv2", "fc1"]
    _assert_counts_match(window)


def test_per_layer_rank_goes_to_rank_pattern_and_counts(qtbot, tmp_path) -> None:
    window = open_digits_window(qtbot, tmp_path)
    tree = window.layer_tree
    window.counts_panel.wait_until_current()
    before = window.counts_panel.estimate.trainable
    tree.highlight(["fc1"])
    assert tree.highlighted_layers() == ["fc1"]
    tree.rank_spin.setValue(16)
    tree.alpha_spin.setValue(32)
    qtbot.mouseClick(tree.apply_layer_button, Qt.MouseButton.LeftButton)
    lora = window.session.config.lora
    assert lora.rank_pattern == {"fc1": 16} and lora.alpha_pattern == {"fc1": 32.0}
    node = window.session.tree.find("fc1")
    assert (node.rank, node.alpha) == (16, 32.0)
    window.counts_panel.wait_until_current()
    assert window.counts_panel.estimate.trainable == before + (16 - 4) * (512 + 32)
    _assert_counts_match(window)
    qtbot.mouseClick(tree.reset_layer_button, Qt.MouseButton.LeftButton)
    assert window.session.config.lora.rank_pattern == {}


def test_targets_are_exact_even_when_a_name_is_a_suffix_of_others() -> None:
    names = ["conv1", "layer1", "layer1.0", "layer1.0.conv1", "fc"]
    assert targets_for(["fc"], names) == ["fc"]
    regex = targets_for(["conv1"], names)
    assert isinstance(regex, str)
    from torch import nn

    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 2, 1))
    model.add_module("layer1", nn.Sequential(nn.Sequential()))
    model.layer1[0].add_module("conv1", nn.Conv2d(2, 2, 1))
    tree = describe(model, LoraConfig(targets=regex))
    assert [n.name for n in tree.walk() if n.targeted] == ["conv1"]
    key = pattern_key("conv1", names)
    tree = describe(model, LoraConfig(targets=["conv1"], rank_pattern={key: 2}))
    assert {n.name: n.rank for n in tree.walk() if n.targeted} == {"conv1": 2, "layer1.0.conv1": 8}


def test_quick_selection_names_attention_and_mlp_layers() -> None:
    from torch import nn

    block = nn.Module()
    block.attn = nn.Module()
    block.attn.q_proj, block.attn.v_proj = nn.Linear(4, 4), nn.Linear(4, 4)
    block.mlp = nn.Module()
    block.mlp.up_proj, block.mlp.down_proj = nn.Linear(4, 8), nn.Linear(8, 4)
    block.lm_head = nn.Linear(4, 10)
    tree = describe(block)
    assert quick_selection(tree, "attention", []) == ["attn.q_proj", "attn.v_proj"]
    assert quick_selection(tree, "mlp", []) == ["mlp.up_proj", "mlp.down_proj"]
