"""One row of a generated settings form: an editor, validated as the user types, with the message beside it.

A row edits one field of one config section.  What the user types is parsed, handed to
``session.try_update`` (the config's own validation, in one place), and the refusal, if
any, is shown beside the field and recorded in ``session.field_errors`` (which blocks Start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QLineEdit, QWidget

from ..state.session import StudioSession

ERROR_STYLE = "color: #c0392b"


def error_message() -> QLabel:
    """The hidden, wrapping red line under a field that shows why its value was refused."""
    label = QLabel()
    label.setStyleSheet(ERROR_STYLE)
    label.setWordWrap(True)
    label.hide()
    return label


def parse_value(text: str, type_name: str) -> Any:
    """``text`` as a value of ``type_name`` ('int', 'float', 'str'); raises ValueError with a message."""
    text = text.strip()
    if type_name == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, got {text!r}") from None
    if type_name == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
    return text


def format_value(value: Any) -> str:
    """How a value is shown in a text field (floats without trailing noise)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


class FieldRow(QWidget):
    """Editor + message for one field.  ``read`` gives the config's current value; ``write(value)``
    returns the config's refusal message or None."""

    def __init__(
        self,
        session: StudioSession,
        key: str,
        type_name: str,
        read: Callable[[], Any],
        write: Callable[[Any], str | None],
        *,
        choices: tuple[Any, ...] | None = None,
        help_text: str = "",
        editable_choices: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.session, self.key, self.type_name = session, key, type_name
        self._read, self._write, self._choices = read, write, choices
        self.message = error_message()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        if type_name == "bool":
            self.editor: QWidget = QCheckBox()
            self.editor.toggled.connect(self._commit)
        elif choices:
            self.editor = QComboBox()
            self.editor.setEditable(editable_choices)
            self.editor.addItems([str(c) for c in choices])
            if editable_choices:
                self.editor.editTextChanged.connect(self._commit)
            else:
                self.editor.currentIndexChanged.connect(lambda _i: self._commit())
        else:
            self.editor = QLineEdit()
            self.editor.textEdited.connect(self._commit)  # as the user types; programmatic updates stay quiet
        self.editor.setToolTip(help_text)
        layout.addWidget(self.editor, 1)
        layout.addWidget(self.message, 2)
        self._updating = False
        self.refresh()

    # -- public API ---------------------------------------------------------------------------------
    def set_text(self, text: str) -> None:
        """Type ``text`` into the field (as a user would) and commit it."""
        if isinstance(self.editor, QLineEdit):
            self.editor.setText(text)
            self._commit()
        elif isinstance(self.editor, QComboBox):
            if self.editor.isEditable():
                self.editor.setEditText(text)
            else:
                self.editor.setCurrentText(text)
        else:
            self.editor.setChecked(text.lower() in ("1", "true", "yes", "on"))

    def retry(self) -> None:
        """Commit the field's text again (a refusal may have depended on another field)."""
        self._commit()

    def error(self) -> str | None:
        """The message shown beside the field, or None."""
        return self.message.text() if self.message.isVisibleTo(self) else None

    def refresh(self) -> None:
        """Show the config's value unless the field holds a refused value the user is still fixing."""
        if self.key in self.session.field_errors:
            return
        value = self._read()
        self._updating = True
        try:
            if isinstance(self.editor, QCheckBox):
                self.editor.setChecked(bool(value))
            elif isinstance(self.editor, QComboBox):
                if self.editor.isEditable():
                    if self.editor.currentText() != str(value):
                        self.editor.setEditText(str(value))
                else:
                    self.editor.setCurrentText(str(value))
            else:
                try:
                    same = parse_value(self.editor.text(), self.type_name) == value
                except ValueError:
                    same = False
                if not same:  # leave "1e-3" alone when the config holds 0.001
                    self.editor.setText(format_value(value))
        finally:
            self._updating = False
        self._show(None)

    # -- helpers ------------------------------------------------------------------------------------
    def _current_value(self) -> Any:
        if isinstance(self.editor, QCheckBox):
            return self.editor.isChecked()
        if isinstance(self.editor, QComboBox):
            text = self.editor.currentText()
            if self._choices and not self.editor.isEditable():
                return next((c for c in self._choices if str(c) == text), text)
            return parse_value(text, self.type_name)
        return parse_value(self.editor.text(), self.type_name)

    def _commit(self, *_args: object) -> None:
        if self._updating:
            return
        try:
            value = self._current_value()
        except ValueError as exc:
            message: str | None = f"{self.key} {exc}"
        else:
            message = self._write(value)
        self._show(message)
        self.session.set_field_error(self.key, message)

    def _show(self, message: str | None) -> None:
        self.message.setText(message or "")
        self.message.setVisible(bool(message))
        self.editor.setStyleSheet("border: 1px solid #c0392b" if message else "")
