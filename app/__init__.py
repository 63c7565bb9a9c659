"""LoRA Studio's desktop window (PySide6 + pyqtgraph).

The window lands with a later issue; it will reach the engine only through
``lora_studio.core``'s public API.
"""
