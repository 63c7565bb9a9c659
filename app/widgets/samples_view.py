"""What the model does with the run's fixed samples, at each evaluation: a prompt and the text
generated for it (causal LM), or a validation example and the label predicted for it, right or wrong,
with its probability (classifiers).

:class:`SamplesView` shows one run's ``Samples`` events (the latest evaluation, a slider goes back to
earlier ones); :class:`SamplesCompareView` puts several runs' latest samples side by side, matched by
their input, with the runs' differences marked.  Right and wrong read without colour (✓ and ✗ in a
column of their own); the tint only repeats them.
"""

from __future__ import annotations

import difflib
import html
import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSlider,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core import SampleResult, Samples

from ..state.run_history import ComparedSample, compare_samples

TITLE = "Samples"
EMPTY_TEXT = ("Samples appear at each evaluation: a language model continues the prompts of Settings → Samples "
              "([samples] prompts); a classifier labels that many validation examples ([samples] count).")
COMPARE_EMPTY_TEXT = "Tick two or more runs that logged samples to see their outputs side by side."
RIGHT, WRONG = "✓", "✗"
RIGHT_TINT = QColor(46, 160, 67, 70)  # translucent: readable on the light and the dark theme
WRONG_TINT = QColor(215, 58, 73, 70)
LM_HEADERS = ("Prompt", "Generated")
# Short headers: the pane is often a third of the window, and the example's text needs the room
# (each header's tooltip says it in full).
CLASSIFIER_HEADERS = ("✓✗", "Example", "Predicted", "True", "p")
CLASSIFIER_HEADER_TIPS = ("right or wrong", "the validation example", "the predicted label", "the true label",
                          "the predicted label's probability")


def is_classifier_samples(samples: Samples) -> bool:
    """True when ``samples`` are a classifier's (examples with a true label), not generations."""
    return any(item.target is not None or item.correct is not None for item in samples.items)


def right_wrong(samples: Samples) -> tuple[int, int]:
    """(right, wrong) among a classifier's samples (items without a verdict count as neither)."""
    right = sum(1 for item in samples.items if item.correct is True)
    wrong = sum(1 for item in samples.items if item.correct is False)
    return right, wrong


def verdict_mark(item: SampleResult) -> str:
    """✓ for a right prediction, ✗ for a wrong one, '' when the sample has no verdict."""
    return RIGHT if item.correct is True else WRONG if item.correct is False else ""


def probability_text(probability: float | None) -> str:
    """``93%`` (one decimal under 10%, where a whole percent hides the difference); '' when unknown."""
    if probability is None:
        return ""
    return f"{probability:.1%}" if probability < 0.1 else f"{probability:.0%}"


def _append_replacing(history: list[Samples], samples: Samples) -> None:
    """Add an evaluation's samples; a resumed run evaluates again from its checkpoint's step, and what it
    repeats replaces the old entries (as the history's curves do)."""
    while history and history[-1].step >= samples.step:
        history.pop()
    history.append(samples)


class SamplesView(QWidget):
    """One run's samples: a table of the evaluation the slider points at (the latest by default)."""

    def __init__(self, parent: QWidget | None = None, *, empty_text: str = EMPTY_TEXT) -> None:
        super().__init__(parent)
        self.empty_text = empty_text
        self.title = QLabel(TITLE)
        self.title.setWordWrap(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("samples_step_slider")
        self.slider.setToolTip("Earlier evaluations' samples")
        self.slider.setPageStep(1)
        self.slider.valueChanged.connect(self._on_slider)
        self.step_label = QLabel("")
        self.empty_label = QLabel(empty_text)
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("samples_table")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumSize(160, 80)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty_label)
        self.stack.addWidget(self.table)
        steps_row = QHBoxLayout()
        steps_row.setContentsMargins(0, 0, 0, 0)
        steps_row.addWidget(self.slider, 1)
        steps_row.addWidget(self.step_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addLayout(steps_row)
        layout.addWidget(self.stack, 1)
        self.history: list[Samples] = []
        self._index: int | None = None
        self._follow = True  # the slider stays on the latest evaluation until the user moves it back
        self._redraw()

    # -- public API --------------------------------------------------------------------------------
    def clear(self, note: str = "") -> None:
        """Forget every evaluation (a new run); ``note`` replaces the empty-state text."""
        self.history, self._index, self._follow = [], None, True
        self.empty_label.setText(note or self.empty_text)
        self._redraw()

    def add_event(self, event: object) -> None:
        """Take a ``Samples`` event (others are ignored); the view follows it while it shows the latest."""
        if not isinstance(event, Samples):
            return
        _append_replacing(self.history, event)
        if self._follow or self._index is None or self._index >= len(self.history):
            self._index = len(self.history) - 1
        self._redraw()

    def set_history(self, history: list[Samples], note: str = "") -> None:
        """Show a whole run's samples (History: read from its folder), the latest evaluation first."""
        kept = None if self._follow else self.shown_step()  # the user looked back: stay there if it is still there
        self.clear(note)
        for samples in history:
            _append_replacing(self.history, samples)
        steps = self.steps()
        self._index = steps.index(kept) if kept in steps else len(steps) - 1 if steps else None
        self._follow = self._index is None or self._index == len(steps) - 1
        self._redraw()

    def steps(self) -> list[int]:
        """The evaluation steps with samples, oldest first."""
        return [samples.step for samples in self.history]

    def shown_step(self) -> int | None:
        """The step whose samples the table shows (None: none yet)."""
        shown = self.shown_samples()
        return shown.step if shown is not None else None

    def shown_samples(self) -> Samples | None:
        """The samples the table shows."""
        return self.history[self._index] if self._index is not None else None

    def show_step(self, step: int) -> None:
        """Show the evaluation at ``step`` (ValueError when the run has no samples there)."""
        self.slider.setValue(self.steps().index(step))

    def headers(self) -> list[str]:
        """The table's column titles."""
        return [self.table.horizontalHeaderItem(c).text() for c in range(self.table.columnCount())]

    def cell_texts(self) -> list[list[str]]:
        """The table's text, row by row."""
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]

    def right_wrong(self) -> tuple[int, int] | None:
        """(right, wrong) of the shown classifier samples; None for generations or when nothing is shown."""
        shown = self.shown_samples()
        return right_wrong(shown) if shown is not None and is_classifier_samples(shown) else None

    def is_empty(self) -> bool:
        """True while the empty-state text is shown."""
        return self.stack.currentWidget() is self.empty_label

    # -- private -----------------------------------------------------------------------------------
    def _on_slider(self, value: int) -> None:
        if not self.history:
            return
        self._index = max(0, min(value, len(self.history) - 1))
        self._follow = self._index == len(self.history) - 1
        self._redraw()

    def _redraw(self) -> None:
        shown = self.shown_samples()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, len(self.history) - 1))
        self.slider.setValue(self._index or 0)
        self.slider.blockSignals(False)
        for widget in (self.slider, self.step_label):
            widget.setVisible(len(self.history) > 1)
        if shown is None or not shown.items:
            self.title.setText(TITLE if shown is None else f"{TITLE} · step {shown.step}: none")
            self.step_label.setText("")
            self.stack.setCurrentWidget(self.empty_label)
            self.table.setRowCount(0)
            return
        latest = self._index == len(self.history) - 1
        self.step_label.setText(f"step {shown.step}{' (latest)' if latest else ''}")
        classifier = is_classifier_samples(shown)
        summary = f"{len(shown.items)} prompts"
        if classifier:
            right, wrong = right_wrong(shown)
            summary = f"{right} of {right + wrong} right"
        self.title.setText(f"{TITLE} · step {shown.step} · {summary}")
        previous = self.history[self._index - 1] if self._index else None
        if classifier:
            self._fill_classifier(shown)
        else:
            self._fill_generations(shown, previous)
        self.stack.setCurrentWidget(self.table)

    def _setup_columns(self, headers: tuple[str, ...], stretch: set[int]) -> None:
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(list(headers))
        header = self.table.horizontalHeader()
        for column in range(len(headers)):
            mode = QHeaderView.ResizeMode.Stretch if column in stretch else QHeaderView.ResizeMode.ResizeToContents
            header.setSectionResizeMode(column, mode)

    def _fill_generations(self, shown: Samples, previous: Samples | None) -> None:
        self._setup_columns(LM_HEADERS[:1] + (f"{LM_HEADERS[1]} at step {shown.step}",), {0, 1})
        self.table.setRowCount(len(shown.items))
        before = {item.input: item.output for item in previous.items} if previous is not None else {}
        for row, item in enumerate(shown.items):
            prompt, output = _item(item.input), _item(item.output)
            prompt.setToolTip(item.input)
            tip = item.output
            if item.input in before:
                same = "the same" if before[item.input] == item.output else before[item.input]
                tip += f"\n\nAt step {previous.step}: {same}"
            output.setToolTip(tip)
            self.table.setItem(row, 0, prompt)
            self.table.setItem(row, 1, output)

    def _fill_classifier(self, shown: Samples) -> None:
        self._setup_columns(CLASSIFIER_HEADERS, {1})
        for column, tip in enumerate(CLASSIFIER_HEADER_TIPS):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.setRowCount(len(shown.items))
        for row, item in enumerate(shown.items):
            mark = _item(verdict_mark(item))
            mark.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            verdict = "right" if item.correct else "wrong" if item.correct is False else "no verdict"
            cells = (mark, _item(item.input), _item(item.output), _item(item.target or ""),
                     _item(probability_text(item.probability)))
            cells[4].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            tint = RIGHT_TINT if item.correct else WRONG_TINT if item.correct is False else None
            for column, cell in enumerate(cells):
                cell.setToolTip(f"{item.input}: predicted {item.output}"
                                f"{f' ({probability_text(item.probability)})' if item.probability is not None else ''}"
                                f", true label {item.target} — {verdict}")
                if tint is not None:
                    cell.setBackground(tint)
                self.table.setItem(row, column, cell)


class SamplesCompareView(QWidget):
    """Several runs' latest samples side by side, row by row the same prompt or example; rows where
    the runs' outputs differ are marked ≠, and the words one run's text does not share with the first
    run's are bold and underlined."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel(COMPARE_EMPTY_TEXT)
        self.title.setWordWrap(True)
        self.browser = QTextBrowser()
        self.browser.setObjectName("samples_compare")
        self.browser.setOpenLinks(False)
        self.browser.setMinimumSize(160, 80)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.browser, 1)
        self.names: list[str] = []
        self.compared: list[Samples | None] = []
        self._rows: list[ComparedSample] = []

    def show_runs(self, names: list[str], samples: list[Samples | None]) -> None:
        """Compare the runs ``names`` by their samples (each run's latest evaluation; None: it has none)."""
        self.names, self.compared = list(names), list(samples)
        with_samples = [s for s in samples if s is not None and s.items]
        self._rows = compare_samples(samples) if len(with_samples) >= 2 else []
        if not self._rows:
            self.title.setText(COMPARE_EMPTY_TEXT)
            self.browser.clear()
            return
        differing = self.differing_count()
        self.title.setText(f"{len(self._rows)} samples of {len(names)} runs · "
                           f"{differing} differ (≠){'' if differing else ': the runs agree on every one'}")
        self.browser.setHtml(self._html())

    def rows(self) -> list[ComparedSample]:
        """The compared samples, row by row."""
        return list(self._rows)

    def differing_count(self) -> int:
        """How many rows the runs' outputs differ on."""
        return sum(1 for row in self._rows if row.differs)

    def plain_text(self) -> str:
        """What the comparison shows, as text."""
        return self.browser.toPlainText()

    def _html(self) -> str:
        classifier = any(row.target is not None for row in self._rows)
        heads = ["", "Example" if classifier else "Prompt"] + (["True label"] if classifier else [])
        for name, samples in zip(self.names, self.compared, strict=True):
            heads.append(f"{name} · step {samples.step}" if samples is not None else f"{name} · no samples")
        lines = ["<table width='100%' cellspacing='0' cellpadding='3' border='1' style='border-collapse:collapse'>",
                 "<tr>" + "".join(f"<th align='left'>{html.escape(h)}</th>" for h in heads) + "</tr>"]
        for row in self._rows:
            cells = ["≠" if row.differs else "=", _html_text(row.input)]
            if classifier:
                cells.append(html.escape(row.target or ""))
            first = row.results[0]
            for index, result in enumerate(row.results):
                if result is None:
                    cells.append("<i>—</i>")
                elif classifier:
                    probability = probability_text(result.probability)
                    cells.append(f"{verdict_mark(result)} {html.escape(result.output)}"
                                 f"{f' ({probability})' if probability else ''}")
                else:
                    other = row.results[1] if index == 0 and len(row.results) > 1 else first
                    cells.append(_marked_words(result.output, other.output if other is not None else None)
                                 if row.differs else _html_text(result.output))
            lines.append("<tr>" + "".join(f"<td valign='top'>{c}</td>" for c in cells) + "</tr>")
        lines.append("</table>")
        return "\n".join(lines)


def _item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    return item


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _marked_words(text: str, other: str | None) -> str:
    """``text`` as HTML with the words it does not share with ``other`` bold and underlined (a word
    diff: two generations often agree on their first words and part later)."""
    if other is None:
        return _html_text(text)
    mine, theirs = re.split(r"(\s+)", text), re.split(r"(\s+)", other)
    out = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(a=mine, b=theirs, autojunk=False).get_opcodes():
        piece = _html_text("".join(mine[i1:i2]))
        out.append(piece if tag == "equal" or not piece.strip() else f"<b><u>{piece}</u></b>")
    return "".join(out)
