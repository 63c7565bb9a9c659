"""The "Rank study…" dialog: which ranks to train, and whether to add the baselines (full
fine-tuning, head only)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

DEFAULT_RANKS = "4, 8, 16, 32"  # the spread of LoRA's rank study (Hu et al. 2021, table 6)
FULL_LR_FACTOR = 0.1  # full fine-tuning moves every weight: it wants a smaller step than an adapter


def parse_ranks(text: str) -> list[int]:
    """``"4, 8 16"`` -> ``[4, 8, 16]``; raises ValueError naming the bad entry.  Empty gives []."""
    ranks = []
    for part in text.replace(",", " ").split():
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"ranks are whole numbers >= 1, separated by commas; {part!r} is not")
        ranks.append(int(part))
    return ranks


class RankStudyDialog(QDialog):
    """Ranks as text, an optional full fine-tuning run and its learning rate, an optional head-only run."""

    def __init__(self, lr: float, ranks: str = DEFAULT_RANKS, include_full: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Rank study")
        self.ranks_edit = QLineEdit(ranks)
        self.ranks_edit.setToolTip("One run per rank, everything else as in the current config")
        self.full_check = QCheckBox("Add a full fine-tuning run (every weight trains)")
        self.full_check.setChecked(include_full)
        self.full_lr = QDoubleSpinBox()
        self.full_lr.setDecimals(6)
        self.full_lr.setRange(1e-6, 1.0)
        self.full_lr.setSingleStep(1e-4)
        self.full_lr.setValue(lr * FULL_LR_FACTOR)
        self.full_lr.setEnabled(include_full)
        self.full_check.toggled.connect(self.full_lr.setEnabled)
        self.head_check = QCheckBox("Add a head-only run (only the classifier head trains: a linear probe)")
        self.head_check.setToolTip("training.mode = 'head': what the frozen features give without any adapter")
        self.message = QLabel("")
        self.message.setStyleSheet("color: #c0392b")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Queue runs")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Ranks", self.ranks_edit)
        form.addRow("", self.full_check)
        form.addRow("Full fine-tuning lr", self.full_lr)
        form.addRow("", self.head_check)
        layout = QVBoxLayout(self)
        intro = QLabel("Queue the current config at several LoRA ranks and compare them on one plot with their "
                       "trainable-parameter counts. Alpha stays as set (as in the LoRA paper). When the runs "
                       "end, History shows each one's final result against its rank.")
        intro.setWordWrap(True)  # a dialog as wide as one long line would not fit a small screen
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.ranks_edit.textChanged.connect(self._check)
        self.full_check.toggled.connect(self._check)
        self.head_check.toggled.connect(self._check)
        self._check()

    def ranks(self) -> list[int]:
        """The ranks typed (valid once the dialog is accepted)."""
        return parse_ranks(self.ranks_edit.text())

    def full_lr_value(self) -> float | None:
        """The full fine-tuning run's learning rate, or None for no such run."""
        return self.full_lr.value() if self.full_check.isChecked() else None

    def _check(self) -> None:
        try:
            ranks = self.ranks()
            baseline = self.full_check.isChecked() or self.head_check.isChecked()
            problem = "" if ranks or baseline else "type at least one rank"
        except ValueError as exc:
            problem = str(exc)
        self.message.setText(problem)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problem)
