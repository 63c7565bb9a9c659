"""An exception that reaches the window's event loop: reported to a file, told to the user, work kept.

PySide prints an exception raised in a slot to stderr and carries on, which a user who opened the
studio from a desktop icon never sees, while the action they took silently did nothing.  This
hook (installed by ``app/studio.py``) instead saves the unsaved project to the autosave first,
writes the traceback to a report file (``core``'s ``write_error_report``, the CLI's too), and
shows one message naming the error and the report; the window stays open.  Repeats while a
message is open are only counted, so a failing paint cannot stack up dialogs.
``LORA_STUDIO_DEBUG=1`` keeps Python's own printout as well.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from types import TracebackType

from PySide6.QtWidgets import QMessageBox, QWidget

from lora_studio.core import write_error_report

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


class WindowErrorHook:
    """``sys.excepthook`` for the studio: ``install`` it, ``uninstall`` to put the previous one back."""

    def __init__(self, window: QWidget, *, save_work: Callable[[], object] | None = None,
                 show: bool = True) -> None:
        self.window, self.save_work, self.show = window, save_work, show
        self.previous: ExceptHook | None = None
        self.reports: list[str] = []  # the report files written, newest last
        self._open = False  # a message is showing: later errors are counted, not shown
        self._repeats = 0

    def install(self) -> None:
        """Become ``sys.excepthook``."""
        self.previous, sys.excepthook = sys.excepthook, self

    def uninstall(self) -> None:
        """Put the previous hook back."""
        if self.previous is not None and sys.excepthook is self:
            sys.excepthook = self.previous

    def __call__(self, kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt) or self.previous is None:
            (self.previous or sys.__excepthook__)(kind, value, tb)
            return
        if os.environ.get("LORA_STUDIO_DEBUG", "") not in ("", "0"):
            self.previous(kind, value, tb)
        saved = self._save_work()
        details = "".join(traceback.format_exception(kind, value, tb))
        path = write_error_report(details, None, ["studio"])
        where = f"the report is in {path}; please file it" if path else "no report file could be written"
        self.reports.append(str(path))
        first = str(value).strip().splitlines()[0] if str(value).strip() else ""
        print(f"lora-studio studio: error: unexpected {kind.__name__}: {first}; {where}", file=sys.stderr)
        if self._open:
            self._repeats += 1
            return
        if not self.show:
            return
        self._open = True
        try:
            QMessageBox.warning(
                self.window, "Something went wrong",
                f"An unexpected error stopped that action:\n\n{kind.__name__}: {first}\n\n"
                f"{where[:1].upper()}{where[1:]}.\n\n"
                + ("Your unsaved changes were autosaved first. " if saved else "")
                + "The window stays open and you can go on working.")
        finally:
            self._open = False
            self._repeats = 0

    def _save_work(self) -> bool:
        if self.save_work is None:
            return False
        try:
            return bool(self.save_work())
        except Exception:  # noqa: BLE001 - saving is best effort inside an error already being reported
            return False
