"""The layer tree panel: the model's modules with check boxes; what is ticked IS ``config.lora``.

* a filter box (text, or a regular expression with "Regex" ticked) that shows live how many
  layers match and which; "Tick matches" adds them to the selection;
* quick selections: all linear layers (core's ``all-linear`` rule), attention only, MLP only, none;
* ticking a container ticks its whole subtree (its box is tri-state);
* per-layer rank and alpha for the highlighted rows (the side strip or the context menu) go
  to ``rank_pattern``/``alpha_pattern``.

Every change is written through the session (``set_targets``/``set_lora``); the panel redraws
from ``sig_tree_changed``, so there is no second copy of the selection.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSpinBox,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import ModuleInfo, preview_targets

from ..state.session import StudioSession
from ..state.target_selection import quick_selection, targets_for, with_layer_values
from ..widgets.flow_layout import FlowLayout
from ..widgets.layer_tree_model import NAME_ROLE, LayerFilterProxy, LayerTreeModel

QUICK_SELECTIONS = (("All linear", "all-linear"), ("Attention", "attention"), ("MLP", "mlp"), ("None", "none"))
MAX_NAMES_SHOWN = 4  # in the match label; the tooltip lists up to 60


class LayerTreePanel(QWidget):
    """The tree, its filter, quick selections and the per-layer rank/alpha strip."""

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.model = LayerTreeModel(self._toggle, self)
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.matches: list[str] = []  # module paths the filter matches (all, when the filter is empty)
        self._shown_model: object = None  # the model the tree shows: a new one re-checks the filter

        self.filter_edit = QLineEdit(placeholderText="Filter layers (text, or a regex)")
        self.filter_edit.setClearButtonEnabled(True)
        self.regex_box = QCheckBox("Regex")
        self.regex_box.setToolTip("Read the filter as a regular expression, searched in each module path")
        self.tick_matches_button = QPushButton("Tick matches")
        self.tick_matches_button.setToolTip("Adapt every wrappable layer the filter shows")
        self.match_label = QLabel()
        self.match_label.setWordWrap(True)

        self.quick_buttons: dict[str, QPushButton] = {}
        quick_row = QHBoxLayout()
        quick_row.addWidget(QLabel("Select:"))
        for title, kind in QUICK_SELECTIONS:
            button = QPushButton(title)
            button.clicked.connect(lambda _=False, k=kind: self.apply_quick_selection(k))
            self.quick_buttons[kind] = button
            quick_row.addWidget(button)
        quick_row.addStretch(1)

        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setUniformRowHeights(True)  # fast scrolling over thousands of modules
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.setAlternatingRowColors(True)
        self.view.setIndentation(14)
        header = self.view.header()
        header.setStretchLastSection(True)
        # Names are what the user reads: the column fits them, and deep trees scroll sideways
        # rather than eliding a layer's name to nothing.
        for col in range(self.model.columnCount()):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.rank_spin = QSpinBox(minimum=1, maximum=4096)
        self.alpha_spin = QDoubleSpinBox(minimum=0.01, maximum=1e6, decimals=2)
        self.apply_layer_button = QPushButton("Set for highlighted")
        self.reset_layer_button = QPushButton("Use global")
        self.layer_label = QLabel("Highlight layers to give them their own rank and alpha")
        self.layer_label.setWordWrap(True)
        per_layer = FlowLayout()  # wraps in a narrow column instead of widening the window
        per_layer.addWidget(QLabel("Rank"))
        per_layer.addWidget(self.rank_spin)
        per_layer.addWidget(QLabel("Alpha"))
        per_layer.addWidget(self.alpha_spin)
        per_layer.addWidget(self.apply_layer_button)
        per_layer.addWidget(self.reset_layer_button)

        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addWidget(self.regex_box)
        filter_row.addWidget(self.tick_matches_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(filter_row)
        layout.addWidget(self.match_label)
        layout.addLayout(quick_row)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status_label)
        layout.addWidget(self.layer_label)
        layout.addLayout(per_layer)

        self.filter_edit.textChanged.connect(self._apply_filter)
        self.regex_box.toggled.connect(self._apply_filter)
        self.tick_matches_button.clicked.connect(self.tick_matches)
        self.apply_layer_button.clicked.connect(lambda: self.set_layer_values(self.highlighted_layers()))
        self.reset_layer_button.clicked.connect(lambda: self.set_layer_values(self.highlighted_layers(), reset=True))
        self.view.customContextMenuRequested.connect(self._show_context_menu)
        self.view.selectionModel().selectionChanged.connect(self._highlight_changed)
        session.sig_tree_changed.connect(self._show_tree)
        session.sig_config_changed.connect(lambda _config: self._highlight_changed())
        self._show_tree(session.tree)

    # -- public API (what the buttons and menus do; tests drive these) ---------------------------
    def ticked_layers(self) -> list[str]:
        """The layers the config adapts, in model order (read from the session's tree)."""
        tree = self.session.tree
        return [n.name for n in tree.walk() if n.targeted] if tree is not None else []

    def set_ticked(self, names: list[str]) -> None:
        """Adapt exactly ``names``: written to ``config.lora.targets`` through the session."""
        order = {name: i for i, name in enumerate(self.model.all_names())}
        names = sorted(set(names), key=lambda n: order.get(n, len(order)))
        self.session.set_targets(targets_for(names, self.model.all_names()))

    def apply_quick_selection(self, kind: str) -> None:
        """Tick all linear layers, attention only, MLP only, or none."""
        tree, model = self.session.tree, self.session.browse_model
        if tree is None or model is None:
            return
        all_linear = preview_targets(
            model, self.session.training_lora().replace(targets="all-linear", exclude=None, layers=None)
        ).matched
        self.set_ticked(quick_selection(tree, kind, all_linear))

    def tick_matches(self) -> None:
        """Add every wrappable layer the filter matches to the selection."""
        self.set_ticked(self.ticked_layers() + [n for n in self.matches if n in self._tickable()])

    def tick_subtree(self, name: str, tick: bool = True) -> None:
        """Tick (or untick) layer ``name`` and every wrappable layer below it."""
        self._toggle(self.model.wrappable_below(self.model.index_of(name)), tick)

    def highlighted_layers(self) -> list[str]:
        """Wrappable layers at or below the highlighted rows (where per-layer values apply)."""
        names: list[str] = []
        for index in self.view.selectionModel().selectedRows(0):
            names += self.model.wrappable_below(self.proxy.mapToSource(index))
        return list(dict.fromkeys(names))

    def highlight(self, names: list[str]) -> None:
        """Highlight the rows of ``names`` (as a click would)."""
        selection = self.view.selectionModel()
        selection.clearSelection()
        for name in names:
            index = self.proxy.mapFromSource(self.model.index_of(name))
            selection.select(index, selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    def set_layer_values(self, names: list[str], *, reset: bool = False) -> None:
        """Give ``names`` the strip's rank and alpha (``reset``: back to the global values)."""
        if not names:
            return
        rank = None if reset else self.rank_spin.value()
        alpha = None if reset else self.alpha_spin.value()
        lora = with_layer_values(self.session.config.lora, names, self.model.all_names(), rank=rank, alpha=alpha)
        self.session.set_lora(lora)

    # -- reacting to the session -----------------------------------------------------------------
    def _show_tree(self, tree: ModuleInfo | None) -> None:
        first = self.model.rowCount() == 0
        new_model = self.session.browse_model is not self._shown_model
        self._shown_model = self.session.browse_model
        self.model.set_tree(tree, self.session.training_lora().modules_to_save)
        if new_model and tree is not None:
            self._forget_stale_filter()
        if first and tree is not None:
            self.view.expandToDepth(1)
        self._update_matches()
        self._update_status()

    def _update_status(self) -> None:
        preview = self.session.preview()
        if preview is None:
            self.status_label.setText("Load a model to see its layers.")
            return
        ticked = self.ticked_layers()
        added = sum(n.added_parameters for n in self.session.tree.walk()) if self.session.tree else 0
        text = f"{len(ticked)} layer{'s' * (len(ticked) != 1)} adapted, adding {added:,} parameters"
        if preview.error:
            text += f' — <span style="color:#c0392b">{preview.error}</span>'
        self.status_label.setText(text)

    def _highlight_changed(self, *_args: object) -> None:
        names = self.highlighted_layers()
        enabled = bool(names)
        for widget in (self.rank_spin, self.alpha_spin, self.apply_layer_button, self.reset_layer_button):
            widget.setEnabled(enabled)
        lora = self.session.config.lora
        if not names:
            self.rank_spin.setValue(lora.r)
            self.alpha_spin.setValue(lora.alpha)
            self.layer_label.setText(f"Highlight layers to give them their own rank and alpha (global: r={lora.r}, "
                                     f"alpha={lora.alpha:g})")
            return
        self.rank_spin.setValue(lora.rank_for(names[0]))
        self.alpha_spin.setValue(lora.alpha_for(names[0]))
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (", …" if len(names) > MAX_NAMES_SHOWN else "")
        self.layer_label.setText(f"{len(names)} highlighted: {shown}")

    # -- the filter ----------------------------------------------------------------------------
    def _forget_stale_filter(self) -> None:
        """A new model: a filter that matches none of its layers (``layer4`` after resnet18, on
        MiniLM) would show an empty tree, so it is cleared; one that still matches stays."""
        pattern = self._compiled_filter()
        if pattern is None:
            return
        if isinstance(pattern, str) or not any(pattern.search(n) for n in self.model.all_names()):
            self.filter_edit.clear()
    def _compiled_filter(self) -> re.Pattern[str] | None | str:
        text = self.filter_edit.text()
        if not text:
            return None
        if not self.regex_box.isChecked():
            return re.compile(re.escape(text), re.IGNORECASE)
        try:
            return re.compile(text)
        except re.error as exc:
            return f"not a valid regex: {exc}"

    def _apply_filter(self, *_args: object) -> None:
        pattern = self._compiled_filter()
        self.proxy.set_pattern(pattern if isinstance(pattern, re.Pattern) else None)
        if isinstance(pattern, re.Pattern):
            self.view.expandAll()  # show where the matches are
        self._update_matches()

    def _update_matches(self) -> None:
        pattern = self._compiled_filter()
        names = self.model.all_names()
        if isinstance(pattern, str):
            self.matches = []
            self.match_label.setText(f'<span style="color:#c0392b">{pattern}</span>')
            return
        self.matches = [n for n in names if pattern is None or pattern.search(n)]
        if pattern is None:
            self.match_label.setText(f"{len(names)} modules, {len(self._tickable())} LoRA can wrap")
            self.match_label.setToolTip("")
            return
        shown = ", ".join(self.matches[:MAX_NAMES_SHOWN]) + (", …" if len(self.matches) > MAX_NAMES_SHOWN else "")
        count = len(self.matches)
        self.match_label.setText(f"{count} layer{'s' * (count != 1)} match" + (f": {shown}" if count else ""))
        self.match_label.setToolTip("\n".join(self.matches[:60]))

    # -- ticking -------------------------------------------------------------------------------
    def _tickable(self) -> set[str]:
        return set(self.model.tickable_names())

    def _toggle(self, names: list[str], tick: bool) -> None:
        current = self.ticked_layers()
        self.set_ticked(current + names if tick else [n for n in current if n not in set(names)])

    def _show_context_menu(self, pos) -> None:
        index = self.view.indexAt(pos)
        if not index.isValid():
            return
        name = self.proxy.mapToSource(index).data(NAME_ROLE)
        menu = QMenu(self)
        menu.addAction("Tick with everything below", lambda: self.tick_subtree(name, True))
        menu.addAction("Untick with everything below", lambda: self.tick_subtree(name, False))
        menu.addSeparator()
        menu.addAction("Set rank and alpha of highlighted…", self.rank_spin.setFocus)
        menu.addAction("Use global rank and alpha", lambda: self.set_layer_values(self.highlighted_layers(), reset=True))
        menu.exec(self.view.viewport().mapToGlobal(pos))
