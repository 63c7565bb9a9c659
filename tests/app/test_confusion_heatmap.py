"""The confusion matrix heat map: its cells are the evaluation's matrix (counts written in them while
they fit, colour the share of the row), class names on the axes, the step in the title; from 2 to
40 classes."""

from __future__ import annotations

import numpy as np
import pytest

from lora_studio.app.widgets.confusion_heatmap import TICKED_CLASSES, ConfusionHeatmap
from lora_studio.core import EvalMetrics

MATRIX = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
NAMES = ["cat", "dog", "a very long class name"]


def _heatmap(qtbot, size=(600, 450)) -> ConfusionHeatmap:
    view = ConfusionHeatmap()
    qtbot.addWidget(view)
    view.resize(*size)
    view.show()
    qtbot.waitExposed(view)
    return view


def _evaluation(matrix, names, step: int = 20) -> EvalMetrics:
    return EvalMetrics(step=step, loss=0.5, accuracy=0.8, perplexity=None, is_best=True, confusion=matrix,
                       class_names=names)


def test_the_cells_are_the_matrix_coloured_by_share_of_the_row(qtbot) -> None:
    view = _heatmap(qtbot)
    view.add_event(_evaluation(MATRIX, NAMES, step=20))
    assert view.counts.tolist() == MATRIX and view.step == 20
    rows = np.asarray(MATRIX, dtype=float)
    expected = rows / rows.sum(axis=1, keepdims=True)
    assert np.abs(view.colour_values() - expected).max() <= 1e-12
    assert np.abs(view.colour_values().sum(axis=1) - 1.0).max() <= 1e-12
    qtbot.wait(20)
    assert view.cell_labels() == [[str(v) for v in row] for row in MATRIX] and view.labels_shown()
    assert view.axis_names() == ["cat", "dog", "a very long…"]
    right, total = sum(MATRIX[i][i] for i in range(3)), sum(map(sum, MATRIX))
    assert "step 20" in view.title.text() and f"{right} of {total} right" in view.title.text()
    assert view.tooltip_for_cell(1, 0) == "true dog → predicted cat: 2 of 10 (20.0%), wrong"
    assert "recall" in view.tooltip_for_cell(2, 2)


def test_forty_classes_fit_and_keep_their_values(qtbot) -> None:
    view = _heatmap(qtbot, size=(420, 320))
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 30, size=(40, 40)) + np.eye(40, dtype=np.int64) * 200
    view.show_matrix(matrix.tolist(), [f"class {i}" for i in range(40)], 5)
    assert view.counts.tolist() == matrix.tolist()
    expected = matrix / matrix.sum(axis=1, keepdims=True)
    assert np.abs(view.colour_values() - expected).max() <= 1e-12
    assert view.cell_labels() == []  # no room for 1600 numbers: the tooltip tells each cell
    names = view.axis_names()
    assert len(names) <= TICKED_CLASSES and names[:2] == ["class 0", "class 2"]
    assert view.tooltip_for_cell(39, 0).startswith(f"true class 39 → predicted class 0: {matrix[39, 0]} of ")


def test_small_cells_hide_their_counts(qtbot) -> None:
    view = _heatmap(qtbot, size=(180, 140))
    matrix = (np.eye(20, dtype=np.int64) * 1234).tolist()
    view.show_matrix(matrix, None, 0)
    qtbot.wait(20)
    assert view.cell_labels() == [] and not view.labels_shown()
    view.resize(1200, 900)  # room enough: the counts come back
    qtbot.wait(20)
    assert view.labels_shown() and view.cell_labels() == [[str(v) for v in row] for row in matrix]
    assert view.axis_names()[:3] == ["0", "1", "2"]  # no names given: the class indices


def test_an_empty_class_and_bad_input(qtbot) -> None:
    view = _heatmap(qtbot)
    view.show_matrix([[0, 0], [3, 1]], ["empty", "b"], 1)
    assert view.colour_values().tolist() == [[0.0, 0.0], [0.75, 0.25]]
    assert "no examples of this class" in view.tooltip_for_cell(0, 0)
    with pytest.raises(ValueError, match="square"):
        view.show_matrix([[1, 2, 3], [4, 5, 6]], None, 1)
    view.add_event(_evaluation(None, None))  # a language model's evaluation: nothing to draw, nothing changes
    assert view.counts.tolist() == [[0, 0], [3, 1]]
    view.clear()
    assert view.counts is None and view.colour_values() is None and view.cell_labels() == []
    assert "appears at each evaluation" in view.title.text()
