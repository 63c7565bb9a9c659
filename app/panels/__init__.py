"""The main window's panels, one per area: model, layer tree, data, settings, counts, run, history.

Each panel takes the window's :class:`~lora_studio.app.state.session.StudioSession`, reads and
writes the config through it and redraws from its signals; it builds on ``widgets``,
``dialogs`` and ``state``.
"""
