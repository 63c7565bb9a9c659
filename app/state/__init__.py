"""The window's state and logic, without drawing anything.

Every module here imports only the standard library, ``lora_studio.core``'s public API,
``PySide6.QtCore`` (signals, threads, settings) and other ``state`` modules — never
``QtWidgets``, ``QtGui`` or pyqtgraph — so it can be used and tested without a screen.
"""
