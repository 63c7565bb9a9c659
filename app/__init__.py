"""LoRA Studio's desktop window (PySide6 + pyqtgraph), installed as ``lora_studio.app``.

The window reaches the engine only through ``lora_studio.core``'s public API
(``from lora_studio.core import X``, never a module inside it).  One folder per question
(ARCHITECTURE.md, "## The window: state, widgets, panels, dialogs"):

* ``state/`` — what the window knows and does, without drawing: the session, the run
  controller and queue, workers, project files, run history, model loading, target
  selection, the counts estimate.  Qt-free or ``PySide6.QtCore`` only;
* ``widgets/`` — small reusable widgets and item models: plots, the layer tree's model,
  form rows, path fields;
* ``panels/`` — the main window's panels: model, layer tree, data, settings, counts, run, history;
* ``dialogs/`` — the export and rank study dialogs;
* here — the entry points (``launcher``, ``studio``, ``__main__``), the window
  (``main_window``), its theme and its packaged resources.

Imports point one way: ``state`` uses no other part of the app, ``widgets`` use ``state``,
``dialogs`` use both, ``panels`` use any of those, and the window uses everything.
"""
