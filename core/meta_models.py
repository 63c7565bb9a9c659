"""Build a model on the ``meta`` device from a name, for browsing without weights."""

from __future__ import annotations

import torch
from torch import nn


def build_on_meta(spec: str) -> nn.Module:
    """``torchvision:NAME`` or ``transformers:HUB_ID_OR_FOLDER`` -> the model on the meta device.

    A transformers id needs its config: from a local folder, the local cache, or the hub when
    online.  Offline with no cached config raises ``OSError`` saying so.
    """
    source, sep, name = spec.partition(":")
    if not sep or not name:
        raise ValueError(f"model must be 'torchvision:NAME' or 'transformers:ID_OR_FOLDER', got {spec!r}")
    if source == "torchvision":
        import torchvision

        available = torchvision.models.list_models()
        if name not in available:
            raise ValueError(f"torchvision has no model {name!r}; some that it has: {', '.join(available[:12])}, ...")
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None)
    if source == "transformers":
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as exc:
            raise OSError(
                f"could not load the config of {name!r}: not a local folder, not in the local cache, and the "
                f"hub could not be reached (offline?). Give a local folder instead. ({exc.__class__.__name__})"
            ) from None
        with torch.device("meta"):
            return AutoModel.from_config(config)
    raise ValueError(f"unknown model source {source!r}; use torchvision:NAME or transformers:ID_OR_FOLDER")
