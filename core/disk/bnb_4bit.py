"""Weights in bitsandbytes' 4-bit layout (``*-bnb-4bit`` checkpoints), read and written without bitsandbytes.

A ``bnb.nn.Linear4bit`` saves each quantised weight ``W`` as:

* ``W`` — uint8, shape (ceil(n/2), 1), two 4-bit codes a byte (the first value in the high nibble);
* ``W.quant_map`` — the 16 values a code stands for (NF4 or FP4), float32;
* ``W.absmax`` — one scale per block of ``blocksize`` values; with double quantisation
  ("nested") the scales are themselves 8-bit codes into ``W.nested_quant_map``, one float32
  ``W.nested_absmax`` per block of ``nested_blocksize`` scales, plus ``nested_offset``;
* ``W.quant_state.bitsandbytes__nf4`` (or ``__fp4``) — a JSON record (as uint8 bytes): quant type,
  block sizes, the weight's dtype and shape, the nested offset.

The studio's own 4-bit base (``core/layers/nf4_format.py``) stores the same tensors under short
keys, so the two convert into each other without touching a value: :func:`read_bnb_4bit` gives the
studio's tensors and layout (what ``NF4Linear`` holds), :func:`bnb_4bit_entries` the state-dict
entries bitsandbytes saves.  Dequantising is then the studio's own, which computes what
bitsandbytes' ``dequantize_4bit`` computes in the same order and precision, bit for bit
(``tests/core/test_bnb_4bit.py`` checks it against a fixture bitsandbytes wrote).  Hand-written
because bitsandbytes is a CUDA-first package whose import the studio cannot require on every
machine; the format is a few look-ups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

from ..layers.nf4_format import NF4Layout, code_book, dequantize_nf4, dynamic_map
from ..layers.nf4_linear import NF4Linear

_STATE_PREFIX = "quant_state.bitsandbytes__"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FIX = "download the checkpoint again, or quantise the float model in the studio (lora.variant = 'qlora')"


@dataclass(frozen=True)
class Bnb4bitWeight:
    """One weight of a bitsandbytes 4-bit checkpoint, as the studio holds it."""

    tensors: dict[str, torch.Tensor]  # the keys ``quantize_nf4`` returns
    layout: NF4Layout
    dtype: torch.dtype  # the weight's dtype before quantisation (what dequantising gives back)


def bnb_4bit_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The weights of ``tensors`` stored in bitsandbytes' 4-bit layout (those with a quant-state record)."""
    return sorted({key.split(f".{_STATE_PREFIX}")[0] for key in tensors if f".{_STATE_PREFIX}" in key})


def bnb_4bit_keys(tensors: dict[str, torch.Tensor], name: str) -> list[str]:
    """Every key of ``tensors`` that belongs to the 4-bit weight ``name`` (the packed bytes and their records)."""
    return [key for key in tensors if key == name or key.startswith(f"{name}.")]


def read_bnb_4bit(tensors: dict[str, torch.Tensor], name: str) -> Bnb4bitWeight:
    """Weight ``name`` of a bitsandbytes 4-bit state dict in the studio's layout; refused, named, when damaged.

    The code books are checked against NF4/FP4 and the dynamic map, which the studio dequantises with.
    """
    record_key = next((k for k in tensors if k.startswith(f"{name}.{_STATE_PREFIX}")), None)
    if record_key is None:
        raise ValueError(f"{name!r} is not stored in bitsandbytes' 4-bit layout (no {name}.{_STATE_PREFIX}* record)")
    try:
        state = json.loads(bytes(tensors[record_key].tolist()).decode("utf-8"))
        shape, blocksize = tuple(int(d) for d in state["shape"]), int(state["blocksize"])
        dtype = _DTYPES[str(state["dtype"]).removeprefix("torch.")]
        nested = "nested_blocksize" in state
        layout = NF4Layout(shape, blocksize, nested, int(state.get("nested_blocksize", 256)), state["quant_type"])
        maps = {"quant_map": (tensors[f"{name}.quant_map"], code_book(layout.quant_type))}
        out = {"packed": tensors[name].reshape(-1).view(torch.uint8), "absmax": tensors[f"{name}.absmax"]}
        if nested:
            maps["nested_quant_map"] = (tensors[f"{name}.nested_quant_map"], dynamic_map())
            out["nested_absmax"] = tensors[f"{name}.nested_absmax"].float()
            out["nested_offset"] = torch.tensor(float(state["nested_offset"]), dtype=torch.float32)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{name!r}: its bitsandbytes 4-bit record is damaged or incomplete ({exc}); {_FIX}") from None
    for what, (stored, expected) in maps.items():
        if stored.shape != expected.shape or not torch.equal(stored.float().cpu(), expected):
            raise ValueError(f"{name!r}: its {what} is not bitsandbytes' standard code book, which the studio "
                             f"reads; {_FIX}")
    if out["packed"].numel() != -(-layout.numel // 2) or out["absmax"].numel() != layout.blocks:
        raise ValueError(f"{name!r}: {out['packed'].numel()} bytes and {out['absmax'].numel()} scales cannot hold its "
                         f"shape {shape} in blocks of {blocksize}; the checkpoint is damaged: {_FIX}")
    return Bnb4bitWeight(out, layout, dtype)


def bnb_4bit_entries(name: str, tensors: dict[str, torch.Tensor], layout: NF4Layout,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state-dict entries bitsandbytes' ``Linear4bit`` saves for weight ``name`` held in the studio's layout."""
    out = {
        name: tensors["packed"].reshape(-1, 1),
        f"{name}.absmax": tensors["absmax"],
        f"{name}.quant_map": code_book(layout.quant_type, tensors["packed"].device),
    }
    record: dict[str, object] = {"quant_type": layout.quant_type, "blocksize": layout.block_size,
                                 "dtype": str(dtype).removeprefix("torch."), "shape": list(layout.shape)}
    if layout.double_quant:
        out[f"{name}.nested_absmax"] = tensors["nested_absmax"]
        out[f"{name}.nested_quant_map"] = dynamic_map(tensors["packed"].device)
        record.update({"nested_blocksize": layout.double_quant_block_size, "nested_dtype": "float32",
                       "nested_offset": float(tensors["nested_offset"])})
    out[f"{name}.{_STATE_PREFIX}{layout.quant_type}"] = torch.tensor(list(json.dumps(record).encode("utf-8")),
                                                                     dtype=torch.uint8)
    return out


def nf4_linear_from_bnb(weight: Bnb4bitWeight, bias: nn.Parameter | None, *,
                        compute_dtype: torch.dtype | None = None) -> NF4Linear:
    """The studio's frozen 4-bit linear layer holding a bitsandbytes weight as it is (no value changes)."""
    if len(weight.layout.shape) != 2:
        raise ValueError(f"a 4-bit linear weight must be a matrix, got shape {weight.layout.shape}")
    out_features, in_features = weight.layout.shape
    return NF4Linear(in_features, out_features, dict(weight.tensors), weight.layout, bias=bias,
                     compute_dtype=compute_dtype or weight.dtype, source_dtype=weight.dtype)


def nf4_linear_entries(name: str, layer: NF4Linear) -> dict[str, torch.Tensor]:
    """``layer``'s weight as the state-dict entries bitsandbytes saves under ``name`` (e.g. ``q_proj.weight``)."""
    return bnb_4bit_entries(name, layer.quantised_tensors(), layer.layout, layer.source_dtype)


def to_bnb_linear4bit(layer: NF4Linear) -> nn.Module:
    """``layer`` as a ``bitsandbytes.nn.Linear4bit`` over the very same 4-bit tensors (needs bitsandbytes).

    For handing the studio's base to bitsandbytes' kernels or to code that expects its layers
    (PEFT, transformers); the bytes are shared, not re-quantised.
    """
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # not installed, or no usable native library
        raise RuntimeError(f"bitsandbytes is needed to build its Linear4bit ({type(exc).__name__}: {exc}); "
                           "pip install bitsandbytes") from None
    entries = nf4_linear_entries("weight", layer)
    device = layer.weight_packed.device
    module = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                               compute_dtype=layer.compute_dtype, compress_statistics=layer.layout.double_quant,
                               quant_type=layer.layout.quant_type, device="meta")
    module.weight = bnb.nn.Params4bit.from_prequantized(
        data=entries.pop("weight"), quantized_stats={k.removeprefix("weight."): v for k, v in entries.items()},
        requires_grad=False, device=device, module=module)
    module.bias = layer.bias
    return module


def nf4_linear_from_bnb_module(module: nn.Module) -> NF4Linear:
    """A ``bitsandbytes.nn.Linear4bit`` (quantised) as the studio's 4-bit layer over the same tensors."""
    state = getattr(module.weight, "quant_state", None)
    if state is None:
        raise ValueError("this Linear4bit is not quantised yet (its weight has no quant_state); move it to its "
                         "device first")
    entries = {"weight": module.weight.data, **{f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}}
    return nf4_linear_from_bnb(read_bnb_4bit(entries, "weight"), module.bias,
                               compute_dtype=getattr(module, "compute_dtype", None))


def dequantize_bnb_4bit(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Weight ``name`` of a bitsandbytes 4-bit state dict as the float tensor it stands for."""
    weight = read_bnb_4bit(tensors, name)
    return dequantize_nf4(weight.tensors, weight.layout, weight.dtype, use_bnb=False)


def dequantize_bnb_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every bitsandbytes 4-bit weight replaced by its float tensor and its records dropped."""
    names = bnb_4bit_names(tensors)
    owned = {key for name in names for key in bnb_4bit_keys(tensors, name)}
    out = {k: v for k, v in tensors.items() if k not in owned}
    out.update({name: dequantize_bnb_4bit(tensors, name) for name in names})
    return out


__all__ = ["Bnb4bitWeight", "bnb_4bit_entries", "bnb_4bit_keys", "bnb_4bit_names", "dequantize_bnb_4bit",
           "dequantize_bnb_state_dict", "nf4_linear_entries", "nf4_linear_from_bnb", "nf4_linear_from_bnb_module",
           "read_bnb_4bit", "to_bnb_linear4bit"]
