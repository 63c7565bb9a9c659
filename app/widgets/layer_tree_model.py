"""``LayerTreeModel``: a QAbstractItemModel over core's :class:`ModuleInfo` tree, and
``LayerFilterProxy``, the filter the layer tree panel puts in front of it.

Columns: name, type, shape, parameters, and for targeted layers rank, alpha and the
parameters the adapter adds.  The check box of a layer LoRA can wrap says whether the
config targets it; a container's box is tri-state over the wrappable layers below it.
The model holds no selection of its own: check states are read from the tree that
``describe(model, config.lora)`` returned, and a click is handed to ``on_toggle`` (the
panel turns it into ``config.lora.targets``), so the config stays the only copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QBrush, QColor

from lora_studio.core import ModuleInfo, in_modules_to_save

COLUMNS = ("Layer", "Type", "Shape", "Parameters", "Rank", "Alpha", "Adds")
NAME, TYPE, SHAPE, PARAMS, RANK, ALPHA, ADDS = range(len(COLUMNS))
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # the module path, for filters and tests
GREY = QColor(140, 140, 140)

Index = QModelIndex | QPersistentModelIndex


def _shape(node: ModuleInfo) -> str:
    weight = next((p for p in node.parameters if "weight" in p.name), None)
    return "×".join(str(d) for d in weight.shape) if weight is not None else ""


class LayerTreeModel(QAbstractItemModel):
    """The module tree with check boxes; ``on_toggle(names, tick)`` receives every click."""

    def __init__(self, on_toggle: Callable[[list[str], bool], None], parent: Any = None) -> None:
        super().__init__(parent)
        self._on_toggle = on_toggle
        self._nodes: list[ModuleInfo] = []  # depth-first; an index's internal id is a position here
        self._parent_of: list[int] = []  # position of each node's parent (-1 for the root)
        self._row_of: list[int] = []
        self._position: dict[str, int] = {}
        self._wrappable_below: list[list[str]] = []  # per node: wrappable names in its subtree
        self._saved: tuple[str, ...] = ()  # modules trained fully: no adapter on them or below

    # -- public API --------------------------------------------------------------------------------
    def set_tree(self, tree: ModuleInfo | None, fully_trained: list[str] = ()) -> None:
        """Show ``tree``.  The same architecture with new targets keeps expansion and scrolling.

        ``fully_trained``: the ``modules_to_save`` entries (the head included).  The modules they
        name, by core's rule, train whole and cannot also carry an adapter, so their boxes are
        removed and the tooltip says why."""
        nodes = list(tree.walk()) if tree is not None else []
        saved = tuple(fully_trained)
        if [n.name for n in nodes] == [n.name for n in self._nodes] and nodes and saved == self._saved:
            # Same positions, new values: one layout change re-reads every row in one pass and views
            # keep expansion and scrolling (persistent indexes stay put).  A dataChanged per parent
            # cost ~15 ms each behind the filter proxy and the resize-to-contents header: 1.5 s per
            # keystroke on MiniLM (bench/bench_ui_latency.py --keystrokes).
            self.layoutAboutToBeChanged.emit()
            self._nodes = nodes
            self.layoutChanged.emit()
            return
        self.beginResetModel()
        self._saved = saved
        self._index_tree(tree)
        self.endResetModel()

    def node(self, index: Index) -> ModuleInfo | None:
        """The ModuleInfo behind ``index`` (None for the invisible root)."""
        return self._nodes[index.internalId()] if index.isValid() else None

    def index_of(self, name: str) -> QModelIndex:
        """The index of the layer at path ``name`` (invalid when the model has no such layer)."""
        pos = self._position.get(name)
        if pos is None or pos == 0:
            return QModelIndex()
        return self.createIndex(self._row_of[pos], 0, pos)

    def wrappable_below(self, index: Index) -> list[str]:
        """Names of the layers LoRA can wrap at and below ``index``."""
        return list(self._wrappable_below[index.internalId()]) if index.isValid() else []

    def tickable_names(self) -> list[str]:
        """Every layer a box can tick (LoRA can wrap it and it is not trained fully), in model order."""
        return list(self._wrappable_below[0]) if self._wrappable_below else []

    def all_names(self) -> list[str]:
        """Every module path, in model order (the root '' left out)."""
        return [n.name for n in self._nodes[1:]]

    # -- QAbstractItemModel ---------------------------------------------------------------------
    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:
        pos = parent.internalId() if parent.isValid() else 0
        if not self._nodes or not 0 <= row < len(self._nodes[pos].children):
            return QModelIndex()
        child = self._position[self._nodes[pos].children[row].name]
        return self.createIndex(row, column, child)

    def parent(self, index: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        up = self._parent_of[index.internalId()]
        if up <= 0:
            return QModelIndex()
        return self.createIndex(self._row_of[up], 0, up)

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        if not self._nodes or (parent.isValid() and parent.column() != 0):
            return 0
        return len(self._nodes[parent.internalId() if parent.isValid() else 0].children)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == NAME and self._wrappable_below[index.internalId()]:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node, col = self._nodes[index.internalId()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(node, col)
        if role == NAME_ROLE:
            return node.name
        if role == Qt.ItemDataRole.CheckStateRole and col == NAME:
            return self._check_state(index.internalId())
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(index.internalId())
        if role == Qt.ItemDataRole.ForegroundRole and not self._wrappable_below[index.internalId()]:
            return QBrush(GREY)  # nothing here LoRA can wrap: greyed, the reason in the tooltip
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (PARAMS, RANK, ALPHA, ADDS):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.CheckStateRole or not index.isValid():
            return False
        names = self._wrappable_below[index.internalId()]
        if not names:
            return False
        # Clicking a fully ticked box unticks its subtree; any other state ticks all of it.
        tick = self._check_state(index.internalId()) != Qt.CheckState.Checked
        self._on_toggle(names, tick)
        return True

    # -- helpers --------------------------------------------------------------------------------
    def _index_tree(self, tree: ModuleInfo | None) -> None:
        self._nodes, self._parent_of, self._row_of, self._position = [], [], [], {}
        if tree is None:
            self._wrappable_below = []
            return

        def visit(node: ModuleInfo, parent: int, row: int) -> None:
            pos = len(self._nodes)
            self._nodes.append(node)
            self._parent_of.append(parent)
            self._row_of.append(row)
            self._position[node.name] = pos
            for r, child in enumerate(node.children):
                visit(child, pos, r)

        visit(tree, -1, 0)
        below: list[list[str]] = [[] for _ in self._nodes]
        for pos in range(len(self._nodes) - 1, -1, -1):  # children come after parents: fold upwards
            node = self._nodes[pos]
            mine = [node.name] if node.can_wrap and not self._is_saved(node.name) else []
            below[pos] = mine + below[pos]
            if self._parent_of[pos] >= 0:
                below[self._parent_of[pos]] = below[pos] + below[self._parent_of[pos]]
        self._wrappable_below = below

    def _is_saved(self, name: str) -> bool:
        # Core's rule: an entry names a module by path or dotted suffix, and everything inside it trains too.
        return in_modules_to_save(list(self._saved), name)

    def _targeted(self, name: str) -> bool:
        return self._nodes[self._position[name]].targeted

    def _check_state(self, pos: int) -> Qt.CheckState:
        names = self._wrappable_below[pos]
        ticked = sum(self._targeted(n) for n in names)
        if names and ticked == len(names):
            return Qt.CheckState.Checked
        return Qt.CheckState.PartiallyChecked if ticked else Qt.CheckState.Unchecked

    def _display(self, node: ModuleInfo, col: int) -> str:
        if col == NAME:
            return node.name.rpartition(".")[2] or "(model)"
        if col == TYPE:
            return node.type_name
        if col == SHAPE:
            return _shape(node)
        if col == PARAMS:
            return f"{node.total_parameters:,}"
        if not node.targeted:
            return ""
        if col == RANK:
            return str(node.rank)
        if col == ALPHA:
            return f"{node.alpha:g}"
        return f"+{node.added_parameters:,}"

    def _tooltip(self, pos: int) -> str:
        node = self._nodes[pos]
        lines = [node.name or "(the whole model)"]
        if node.problem:
            lines.append(node.problem)
        if node.targeted:
            lines.append(f"adapted: rank {node.rank}, alpha {node.alpha:g}, adds {node.added_parameters:,} parameters")
        elif self._is_saved(node.name):
            lines.append("trained fully with the adapter (the model's head or modules_to_save), so not adapted")
        elif node.can_wrap:
            lines.append("LoRA can wrap this layer: tick it to adapt it")
        elif node.reason and not self._wrappable_below[pos]:
            lines.append(f"cannot carry LoRA: {node.reason}")
        return "\n".join(lines)


class LayerFilterProxy(QSortFilterProxyModel):
    """Shows the layers whose path matches the filter, with their ancestors (recursive filtering)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self._pattern: re.Pattern[str] | None = None

    def set_pattern(self, pattern: re.Pattern[str] | None) -> None:
        """Filter by ``pattern`` (searched anywhere in the module path); None shows everything."""
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateFilter() is deprecated there
            self.beginFilterChange()
            self._pattern = pattern
            self.endFilterChange()
        else:
            self._pattern = pattern
            self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: Index) -> bool:
        if self._pattern is None:
            return True
        name = self.sourceModel().index(row, 0, parent).data(NAME_ROLE)
        return bool(name) and self._pattern.search(name) is not None
