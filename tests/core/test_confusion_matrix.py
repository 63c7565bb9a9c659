"""The confusion matrix of a classifier's evaluation, and which classes improved most."""

import pytest
from run_configs import digits_run

from lora_studio.core import ClassChange, class_changes
from lora_studio.core.training import EvalMetrics, read_metrics, train

ACCURACY_TOLERANCE = 1e-9  # the accuracy and the matrix count the same predictions


@pytest.fixture(scope="module")
def digits_evals(tmp_path_factory) -> list[dict]:
    """A short digits run evaluated at the start, at step 3 and at the end."""
    out = tmp_path_factory.mktemp("confusion")
    result = train(digits_run(out, max_steps=6, eval_every=3, eval_at_start=True))
    assert result.status == "finished", result.error
    return [r for r in read_metrics(out) if r["event"] == "EvalMetrics"]


def test_confusion_counts_the_whole_validation_set_and_matches_accuracy(digits_evals) -> None:
    from lora_studio.core.data.digits import digits_split, load_digits_tensors

    _, labels = load_digits_tensors()
    _, validation = digits_split(len(labels))  # the digits demo's own split (data.split_seed 0)
    assert [r["step"] for r in digits_evals] == [0, 3, 6]
    for record in digits_evals:
        confusion, names = record["confusion"], record["class_names"]
        assert names == [str(i) for i in range(10)]
        assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
        total = sum(map(sum, confusion))
        assert total == len(validation)
        diagonal = sum(confusion[i][i] for i in range(10))
        assert abs(diagonal / total - record["accuracy"]) <= ACCURACY_TOLERANCE
        # rows are the true classes: each row sums to that class's count in the validation set
        true_counts = [int((labels[validation] == k).sum()) for k in range(10)]
        assert [sum(row) for row in confusion] == true_counts


def test_causal_lm_evaluations_have_no_confusion_matrix() -> None:
    event = EvalMetrics(step=1, loss=2.0, accuracy=None, perplexity=7.4, is_best=True)
    assert event.confusion is None and event.class_names is None


def test_class_changes_on_a_hand_made_matrix() -> None:
    names = ["cat", "dog", "owl"]
    first = [[5, 5, 0],   # cat: recall 0.5
             [8, 2, 0],   # dog: 0.2
             [0, 0, 4]]   # owl: 1.0
    last = [[6, 4, 0],    # cat: 0.6  (+0.1)
            [1, 9, 0],    # dog: 0.9  (+0.7)
            [1, 1, 2]]    # owl: 0.5  (-0.5)
    changes = class_changes(first, last, names)
    assert [c.name for c in changes] == ["dog", "cat", "owl"]
    expected = {"cat": (0.5, 0.6), "dog": (0.2, 0.9), "owl": (1.0, 0.5)}
    for change in changes:
        assert isinstance(change, ClassChange)
        assert change.recall_before == pytest.approx(expected[change.name][0], abs=1e-12)
        assert change.recall_after == pytest.approx(expected[change.name][1], abs=1e-12)
    improvements = [c.improvement for c in changes]
    assert improvements == sorted(improvements, reverse=True)


def test_class_changes_leave_out_classes_without_examples_and_keep_ties_in_class_order() -> None:
    first = [[1, 1, 0], [0, 0, 0], [1, 1, 0]]
    last = [[2, 0, 0], [0, 0, 0], [0, 0, 2]]
    changes = class_changes(first, last, ["a", "b", "c"])
    assert [c.name for c in changes] == ["c", "a"]  # c +1.0, a +0.5; b has no validation examples


def test_class_changes_name_a_misfit() -> None:
    with pytest.raises(ValueError, match="3x3"):
        class_changes([[1, 0], [0, 1]], [[1, 0], [0, 1]], ["a", "b", "c"])


def test_class_changes_of_a_real_run(digits_evals) -> None:
    first, last = digits_evals[0], digits_evals[-1]
    changes = class_changes(first["confusion"], last["confusion"], first["class_names"])
    assert {c.name for c in changes} == set(first["class_names"])
    for change in changes:
        row = int(change.name)
        assert change.recall_after == pytest.approx(last["confusion"][row][row] / sum(last["confusion"][row]),
                                                    abs=1e-12)
