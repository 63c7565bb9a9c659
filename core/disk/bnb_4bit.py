"""Weights stored in bitsandbytes' 4-bit layout (``*-bnb-4bit`` checkpoints), read without bitsandbytes.

A ``bnb.nn.Linear4bit`` saves each quantised weight ``W`` as:

* ``W`` — uint8, two 4-bit codes a byte (the first value in the high nibble);
* ``W.quant_map`` — the 16 values a code stands for (NF4 or FP4), float32;
* ``W.absmax`` — one scale per block of ``blocksize`` values; with double quantisation
  ("nested") the scales are themselves 8-bit codes into ``W.nested_quant_map``, one float32
  ``W.nested_absmax`` per block of ``nested_blocksize`` scales, plus ``nested_offset``;
* ``W.quant_state.bitsandbytes__nf4`` (or ``__fp4``) — a JSON record (as uint8 bytes): quant type,
  block sizes, the weight's dtype and shape, the nested offset.

:func:`dequantize_bnb_4bit` computes what bitsandbytes' ``dequantize_4bit`` computes, in the same
order and precision (codes looked up in float32, times the float32 block scale, then cast to the
weight's dtype), so the result equals bitsandbytes' bit for bit (``tests/core/test_bnb_4bit.py``
checks it against a fixture bitsandbytes wrote).  Hand-written because bitsandbytes is a CUDA-first
package whose import the studio cannot require on every machine; the format is a few lookups.
"""

from __future__ import annotations

import json
import math

import torch

_STATE_PREFIX = "quant_state.bitsandbytes__"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def bnb_4bit_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The weights of ``tensors`` stored in bitsandbytes' 4-bit layout (those with a quant-state record)."""
    return sorted({key.split(f".{_STATE_PREFIX}")[0] for key in tensors if f".{_STATE_PREFIX}" in key})


def dequantize_bnb_4bit(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Weight ``name`` of a bitsandbytes 4-bit state dict as the float tensor it stands for."""
    record_key = next((k for k in tensors if k.startswith(f"{name}.{_STATE_PREFIX}")), None)
    if record_key is None:
        raise ValueError(f"{name!r} is not stored in bitsandbytes' 4-bit layout (no {name}.{_STATE_PREFIX}* record)")
    try:
        state = json.loads(bytes(tensors[record_key].tolist()).decode("utf-8"))
        shape, blocksize = [int(d) for d in state["shape"]], int(state["blocksize"])
        dtype = _DTYPES[state["dtype"].removeprefix("torch.")]
        codes = tensors[f"{name}.quant_map"].float()
        absmax = tensors[f"{name}.absmax"]
        if "nested_blocksize" in state:
            nested = tensors[f"{name}.nested_quant_map"].float()[absmax.long()]
            absmax = _scaled(nested, tensors[f"{name}.nested_absmax"].float(), int(state["nested_blocksize"]))
            absmax = absmax + float(state["nested_offset"])
        packed = tensors[name].reshape(-1).view(torch.uint8)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name!r}: its bitsandbytes 4-bit record is damaged or incomplete ({exc}); "
                         "download the checkpoint again") from None
    count = math.prod(shape)
    index = torch.empty(packed.numel() * 2, dtype=torch.long)
    index[0::2], index[1::2] = (packed >> 4).long(), (packed & 0xF).long()
    if index.numel() < count or absmax.numel() < math.ceil(count / blocksize):
        raise ValueError(f"{name!r}: {packed.numel()} bytes and {absmax.numel()} scales cannot hold its shape "
                         f"{tuple(shape)}; the checkpoint is damaged")
    values = _scaled(codes[index[:count]], absmax.float(), blocksize)
    return values.reshape(shape).to(dtype)


def dequantize_bnb_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every bitsandbytes 4-bit weight replaced by its float tensor and its records dropped."""
    names = bnb_4bit_names(tensors)
    out = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.") for n in names) and k not in names}
    out.update({name: dequantize_bnb_4bit(tensors, name) for name in names})
    return out


def _scaled(values: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``values`` (float32) times the scale of their block, a short last block included, as bitsandbytes does."""
    count = values.numel()
    full = count - count % blocksize
    head = (values[:full].reshape(-1, blocksize) * scales[: full // blocksize].view(-1, 1)).reshape(full)
    if full == count:
        return head
    return torch.cat([head, values[full:] * scales[full // blocksize]])


__all__ = ["bnb_4bit_names", "dequantize_bnb_4bit", "dequantize_bnb_state_dict"]
