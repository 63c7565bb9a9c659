"""Is this process meant to stay off the network?  One rule for every source."""

from __future__ import annotations

import os

_FLAGS = ("LORA_STUDIO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline(*also: str) -> bool:
    """True when any of the usual offline switches (or the source's own, ``also``: e.g. datasets'
    ``HF_DATASETS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in (*_FLAGS, *also))
