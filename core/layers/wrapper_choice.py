"""Which wrapper a module gets: :func:`wrapper_for` is the single place that decides whether a
module can carry LoRA and, when it cannot, says why in words a user can act on."""


from __future__ import annotations

from torch import nn

from .base import AdapterLayer
from .conv import CONV_TYPES, ConvLora
from .embedding import EmbeddingLora, embedding_max_norm_reason
from .linear import LinearLora, is_transformers_conv1d
from .weight_space import RNN_CELL_TYPES, WeightSpaceLora, mha_reason

SUPPORTED_TYPES_TEXT = (
    "Linear, Conv1d/2d/3d, Embedding, transformers Conv1D, MultiheadAttention, RNNCell, LSTMCell, GRUCell"
)


def wrapper_for(module: nn.Module, *, inside_attention: bool = False) -> tuple[type[AdapterLayer] | None, str | None]:
    """The adapter class for ``module``, or ``(None, reason)`` when LoRA cannot wrap it.

    ``inside_attention`` marks the out-projection owned by an ``nn.MultiheadAttention``:
    the attention reads its weight directly, so it is adapted through its parent.
    """
    if isinstance(module, AdapterLayer):
        return wrapper_for(module.base_layer, inside_attention=inside_attention)
    if inside_attention:
        return None, (
            "this projection belongs to a MultiheadAttention, which reads its weight directly; "
            "target the attention module itself (its in- and out-projections are adapted together)"
        )
    if isinstance(module, nn.Linear) or is_transformers_conv1d(module):
        return LinearLora, None
    if isinstance(module, CONV_TYPES):
        return ConvLora, None  # grouped too: ConvLora refuses the variants without a grouped form
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            return None, embedding_max_norm_reason()
        return EmbeddingLora, None
    if isinstance(module, nn.MultiheadAttention):
        reason = mha_reason(module)
        return (None, reason) if reason else (WeightSpaceLora, None)
    if isinstance(module, RNN_CELL_TYPES):
        return WeightSpaceLora, None
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        return None, (
            f"{type(module).__name__} runs a fused multi-step kernel LoRA cannot enter; "
            f"build the model from {type(module).__name__}Cell layers to adapt it"
        )
    if next(module.children(), None) is not None:
        return None, "a container; its layers are listed below it"
    if next(module.parameters(recurse=False), None) is None:
        return None, f"{type(module).__name__} has no weights to adapt"
    return None, f"{type(module).__name__} has no LoRA form (supported: {SUPPORTED_TYPES_TEXT})"
