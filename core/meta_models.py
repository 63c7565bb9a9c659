"""Build a model on the ``meta`` device from a name, for browsing without weights.

Kept for existing callers; the sources live in :mod:`lora_studio.core.models`.
"""

from __future__ import annotations

from .models import build_on_meta

__all__ = ["build_on_meta"]
