"""The Qt binding must not leak references to None.

PySide6 6.12.0 loses one reference to None on every Qt call that returns nothing to
Python; on Python < 3.12 (None is not immortal) the interpreter then aborts
("none_dealloc"), during a long session or at exit. pyproject.toml excludes that
release; this test catches any other release with the same fault.
"""

import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QStandardItemModel

CALLS = 1000
ALLOWED_DRIFT = 50  # unrelated objects may come and go; a leak loses one per call


def test_qt_calls_returning_nothing_keep_none_alive(qapp) -> None:
    model = QStandardItemModel(3, 3)
    before = sys.getrefcount(None)
    for _ in range(CALLS):
        model.index(1, 1).data(Qt.ItemDataRole.DecorationRole)
    assert sys.getrefcount(None) - before > -ALLOWED_DRIFT
