"""Take PySide's ``__feature__`` hook out of every later ``import`` in the process.

Importing PySide6 replaces ``builtins.__import__`` with shiboken's ``__feature_import__``: after
each new module it runs Python code that reads the module's whole source (``inspect.getsource``)
to see whether it mentions PySide6, for the opt-in ``from __feature__ import snake_case`` syntax.
The studio never uses those features, and the hook made every first import on a worker thread
(transformers' model modules, torchvision's builders) a long stretch of Python holding the GIL
while the UI thread waited to paint; the app's tests hung there.  Restoring the import shiboken
wrapped (``builtins.__orig_import__``, which keeps its lazy type loading) ends that.  Modules
imported afterwards are simply not in PySide's feature table, which shiboken treats as "no
feature", the same as before.  (napari's startup investigation, napari/napari#8584, found the
same hook costing seconds.)
"""

from __future__ import annotations

import builtins

import PySide6.QtCore  # noqa: F401 - installs the hook first, so undoing it below is final


def bypass_pyside_import_hook() -> bool:
    """Put back the import PySide's feature hook wrapped; True when it was in place."""
    wrapped = getattr(builtins, "__orig_import__", None)
    if wrapped is None or builtins.__import__ is wrapped:
        return False
    if getattr(builtins.__import__, "__name__", "") != "__feature_import__":
        return False  # someone else hooked import after PySide: leave their chain alone
    builtins.__import__ = wrapped
    return True


bypass_pyside_import_hook()  # importing this module is the point: app/state/workers.py does, before any thread starts
