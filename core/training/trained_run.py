"""The trained model of a run folder, rebuilt from its config and its saved weights.

What the CLI exports and what the window hands to its export dialog: the model built
exactly as the run built it, with the final checkpoint's weights (or the best adapter).
"""

from __future__ import annotations

from pathlib import Path

from ..disk.adapter_folder import load_adapter
from ..disk.safe_loading import load_safetensors
from ..models import LoadedModel
from .checkpoint import latest_checkpoint
from .setup import build_model
from .trainer import BEST_DIR, load_run_config

WHICH = ("final", "best")


def load_trained_run(run_dir: str | Path, which: str = "final") -> LoadedModel:
    """The model trained in ``run_dir``: ``'final'`` (the newest checkpoint: the weights at the
    last step, adapter attached, or the whole model in full fine-tuning) or ``'best'`` (the
    adapter of the lowest validation loss, LoRA runs only).  Raises FileNotFoundError when the
    folder holds no such weights, ValueError for an unknown ``which``."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if which == "best":
        if config.training.mode == "full" or not (run_dir / BEST_DIR).is_dir():
            raise FileNotFoundError(f"{run_dir} holds no best adapter ({BEST_DIR}/); use the final weights")
        loaded, _, _ = build_model(config, attach_adapter=False)
        load_adapter(loaded.model, run_dir / BEST_DIR)
        return loaded
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint to load the trained model from")
    loaded, _, _ = build_model(config)
    loaded.model.load_state_dict(load_safetensors(checkpoint / "model.safetensors"), strict=False)
    return loaded
