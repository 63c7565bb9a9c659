"""Small reusable widgets and item models the panels and dialogs are built from.

A widget here knows nothing of the main window: it takes its data through its own methods
(or the session, for the few that edit it) and may use ``state``, never ``panels`` or ``dialogs``.
"""
