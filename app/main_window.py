"""The studio window: model and layer tree on the left, settings and counts on the right,
data, training and history in the middle.

Every panel takes the one :class:`~.session.StudioSession` and subscribes to its signals.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QMainWindow, QSplitter, QTabWidget, QVBoxLayout, QWidget

from .counts_panel import CountsPanel
from .data_panel import DataPanel
from .history_panel import HistoryPanel
from .layer_tree import LayerTreePanel
from .model_panel import ModelPanel
from .run_panel import RunPanel
from .session import StudioSession
from .settings_panel import SettingsPanel


class MainWindow(QMainWindow):
    """LoRA Studio's main window."""

    def __init__(self, session: StudioSession | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session or StudioSession(parent=self)
        self.setWindowTitle("LoRA Studio")
        self.resize(1400, 900)

        self.model_panel = ModelPanel(self.session)
        self.layer_tree = LayerTreePanel(self.session)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.model_panel)
        left.addWidget(self.layer_tree)
        left.setStretchFactor(1, 1)

        self.data_panel = DataPanel(self.session)
        self.run_panel = RunPanel(self.session)
        self.history_panel = HistoryPanel(self.session)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.run_panel, "Train")
        self.tabs.addTab(self.data_panel, "Data")
        self.tabs.addTab(self.history_panel, "History")

        central = QSplitter(Qt.Orientation.Horizontal)
        central.addWidget(left)
        central.addWidget(self.tabs)
        central.setStretchFactor(1, 1)
        self.setCentralWidget(central)

        self.settings_panel = SettingsPanel(self.session)
        self.counts_panel = CountsPanel(self.session)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.counts_panel)
        side_layout.addWidget(self.settings_panel, 1)
        dock = QDockWidget("Settings", self)
        dock.setObjectName("settings_dock")
        dock.setWidget(side)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
