"""NEFTune: uniform noise on the input embeddings while training (Jain et al., 2023,
"NEFTune: Noisy Embeddings Improve Instruction Finetuning").

The noise of each forward is ``Uniform(-m, m)`` with ``m = alpha / sqrt(L * d)`` (``L`` the
sequence length, ``d`` the embedding width), the paper's scaling and transformers'
``neftune_noise_alpha``.  It is a forward hook on the model's input embedding that acts only in
training mode, so evaluation, samples and inference see the model unchanged; the run removes
the hook when it ends.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def neftune_scale(alpha: float, length: int, width: int) -> float:
    """The half-width of NEFTune's uniform noise for a sequence of ``length`` tokens of ``width``."""
    return alpha / math.sqrt(length * width)


def add_neftune(model: nn.Module, alpha: float) -> RemovableHandle:
    """Register NEFTune noise of ``alpha`` on ``model``'s input embedding; returns the hook's handle
    (``handle.remove()`` takes it off).  Refuses a model without ``get_input_embeddings``."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module):
        raise ValueError("training.neftune_alpha needs a language model with input embeddings (a transformers "
                         "model); set training.neftune_alpha = 0 for this model")

    def noise(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training or output.dim() != 3:
            return output
        scale = neftune_scale(alpha, output.shape[1], output.shape[2])
        return output + torch.zeros_like(output).uniform_(-scale, scale)  # the global RNG: the run's seed

    return embedding.register_forward_hook(noise)
