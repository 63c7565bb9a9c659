"""Which classes a run improved most: per-class recall at the first and the last evaluation.

The run summary's "the classes that improved most" reads this; the matrices are two
``EvalMetrics.confusion`` of the same run (rows = true class, columns = predicted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassChange:
    """One class's recall (right / examples of the class) before and after training."""

    name: str
    recall_before: float
    recall_after: float

    @property
    def improvement(self) -> float:
        """``recall_after - recall_before`` (negative: the class got worse)."""
        return self.recall_after - self.recall_before


def class_changes(first: Sequence[Sequence[int]], last: Sequence[Sequence[int]],
                  class_names: Sequence[str]) -> list[ClassChange]:
    """Each class's recall in ``first`` and in ``last``, largest improvement first (ties in class order).

    A class without validation examples (an empty row in both) has no recall and is left out.
    Raises ``ValueError`` when the matrices are not square, differ in size, or do not match
    ``class_names``.
    """
    size = len(class_names)
    for which, matrix in (("first", first), ("last", last)):
        if len(matrix) != size or any(len(row) != size for row in matrix):
            raise ValueError(f"the {which} confusion matrix must be {size}x{size} (one row and column per "
                             f"class name), got {len(matrix)} rows")
    changes = []
    for index, name in enumerate(class_names):
        before, after = _recall(first[index], index), _recall(last[index], index)
        if before is None and after is None:
            continue
        if before is None or after is None:
            raise ValueError(f"class {name!r} has validation examples in one matrix only: the two confusion "
                             "matrices must come from the same validation set")
        changes.append(ClassChange(name, before, after))
    return sorted(changes, key=lambda change: -change.improvement)  # sorted() is stable: ties keep class order


def _recall(row: Sequence[int], index: int) -> float | None:
    total = sum(row)
    return None if total == 0 else row[index] / total
