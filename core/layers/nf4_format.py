"""4-bit block-wise quantisation (NF4, and FP4) in plain PyTorch, in bitsandbytes' layout (QLoRA,
Dettmers et al. 2023, arXiv:2305.14314).

One weight tensor becomes a handful of small tensors, exactly as bitsandbytes' ``quantize_4bit``
stores them (so a ``*-bnb-4bit`` checkpoint loads without re-quantising, and our base hands to
``bnb.nn.Linear4bit`` as it is — ``core/disk/bnb_4bit.py`` maps the keys)::

    W (any shape, float) ── flatten ──► blocks of ``block_size`` values (the last one may be short)
        per block  c = max |w|                           (section 2, block-wise k-bit quantisation)
                   x = clamp(w · (1/c), -1, 1) ──► nearest code-book value, a 4-bit index (section 3)
        two indices per byte, the first value in the high nibble: ``packed``, ceil(n/2) bytes
    optional double quantisation of the absmax values c              (section 3, double quantisation)
        offset = mean(c); c − offset in blocks of ``double_quant_block_size`` (256), each scaled by its
        own absmax (``nested_absmax``, float32) to 8-bit codes of bitsandbytes' signed "dynamic" map

Dequantising reverses it: ``w' = code[index] · c'`` in float32, then the weight's dtype, where ``c'``
is the (double-)dequantised absmax.  The arithmetic is bitsandbytes' reference order, so the result
equals its ``dequantize_4bit`` bit for bit (``tests/core/test_bnb_4bit.py`` checks against tensors
bitsandbytes wrote).  The error bound per element is ``|w − w'| ≤ c · g/2 + |c − c'|`` with ``g`` the
widest gap between adjacent code-book values (NF4: 0.3038, between −1 and −0.6962).

When bitsandbytes is installed and the tensors sit on a CUDA device, the 4-bit dequantisation
runs in its kernel (same code book, same packing); everything else is plain PyTorch.  The
stored format is the same either way, so a model quantised on one device loads on the other.
Hand-written rather than importing bitsandbytes: it is a CUDA-first package the studio cannot
require on every machine, and the format is a few look-ups.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

#: The 16 NF4 levels as published (QLoRA appendix E; bitsandbytes ``get_4bit_type("nf4")``): the
#: quantiles of N(0, 1) normalised into [-1, 1], asymmetric so that 0 is represented exactly.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

#: bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, before it is
#: divided by its largest magnitude (12) into [-1, 1]; codes 0 and 8 both stand for zero.
_FP4_PATTERNS: tuple[float, ...] = (0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0, -0.0625, -8.0, -12.0, -4.0, -6.0,
                                    -2.0, -3.0)
QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class NF4Layout:
    """What is needed besides the tensors to undo the quantisation (bitsandbytes' quant state)."""

    shape: tuple[int, ...]
    block_size: int = 64  # section 3: blocks of 64 for the weights
    double_quant: bool = True
    double_quant_block_size: int = 256  # section 3: blocks of 256 for the second quantisation
    quant_type: str = "nf4"  # or "fp4" (read from bitsandbytes checkpoints; NF4 is what QLoRA uses)

    def __post_init__(self) -> None:
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {self.quant_type!r}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def blocks(self) -> int:
        return -(-self.numel // self.block_size)


def nf4_levels(device: torch.device | str | None = None) -> torch.Tensor:
    """The NF4 code book as a float32 tensor (ascending)."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def code_book(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 values a 4-bit index stands for (bitsandbytes' ``quant_map``), float32, by index."""
    if quant_type == "nf4":
        return nf4_levels(device)
    patterns = torch.tensor(_FP4_PATTERNS, dtype=torch.float32, device=device)
    return patterns / patterns.abs().max()


@functools.cache
def _dynamic_map_cpu() -> torch.Tensor:
    # bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), step by step
    # in the same float32 operations, so the 256 values are its own bit for bit.
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0, 1.0]
    data += [0] * (256 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def dynamic_map(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code book (ascending): the double-quantised scales' values."""
    return _dynamic_map_cpu().to(device, copy=True)  # a copy: the cached one must never be written to


def max_half_gap(quant_type: str = "nf4") -> float:
    """Half the widest gap between adjacent code-book values: the rounding bound on a normalised value."""
    values = sorted(code_book(quant_type).tolist())
    return max(b - a for a, b in zip(values, values[1:])) / 2


# -- quantising ---------------------------------------------------------------------------------
def quantize_nf4(weight: torch.Tensor, layout: NF4Layout) -> dict[str, torch.Tensor]:
    """Quantise ``weight`` (float, ``layout.shape``) as bitsandbytes does; returns the tensors to store.

    Keys: ``packed`` (uint8, ceil(n/2) bytes) and ``absmax`` (float32, one per block), or with
    double quantisation ``absmax`` as uint8 codes of the dynamic map plus ``nested_absmax`` (float32,
    one per scale block) and ``nested_offset`` (float32 scalar).
    """
    if tuple(weight.shape) != layout.shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} differs from the layout's {layout.shape}")
    code = code_book(layout.quant_type, weight.device)
    indices, absmax = _quantize_blocks(weight.detach().reshape(-1).float(), code, layout.block_size)
    if indices.numel() % 2:
        indices = torch.cat([indices, _zero_index(code)])
    out = {"packed": (indices[0::2] << 4) | indices[1::2]}
    if layout.double_quant:
        offset = absmax.mean()
        codes, nested = _quantize_blocks(absmax - offset, dynamic_map(weight.device), layout.double_quant_block_size)
        out.update({"absmax": codes, "nested_absmax": nested, "nested_offset": offset.reshape(())})
    else:
        out["absmax"] = absmax
    return out


def _quantize_blocks(flat: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (uint8) of the nearest ``code`` value to each value over its block's absmax, and the absmaxes.

    bitsandbytes' reference arithmetic: ``clamp(x · (1/absmax), -1, 1)`` (a zero block divides by
    1e-38, giving zeros), then the nearest value by its midpoints (a code book out of order, FP4's,
    through its sorting permutation).
    """
    count = flat.numel()
    full = count - count % block_size
    absmax = flat[:full].reshape(-1, block_size).abs().amax(dim=1)
    scaled = torch.clamp(flat[:full].reshape(-1, block_size) * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1)
    scaled = scaled.reshape(-1)
    if full < count:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.reshape(1)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    order = torch.argsort(code)
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2
    return order[torch.bucketize(scaled, midpoints)].to(torch.uint8), absmax


def _zero_index(code: torch.Tensor) -> torch.Tensor:
    """The index bitsandbytes pads an odd count with (the nearest value to 0)."""
    indices, _ = _quantize_blocks(torch.zeros(1, device=code.device), code, 1)
    return indices


# -- dequantising -------------------------------------------------------------------------------
def dequantize_absmax(tensors: dict[str, torch.Tensor], layout: NF4Layout) -> torch.Tensor:
    """The per-block scales ``c'`` in float32 (undoing double quantisation when it was used)."""
    absmax = tensors["absmax"]
    if not layout.double_quant:
        return absmax.float()
    values = dynamic_map(absmax.device)[absmax.long()]
    return _times_block_scale(values, tensors["nested_absmax"].float(), layout.double_quant_block_size) + \
        tensors["nested_offset"].float()


def dequantize_nf4(
    tensors: dict[str, torch.Tensor], layout: NF4Layout, dtype: torch.dtype = torch.float32, *, use_bnb: bool = True
) -> torch.Tensor:
    """The weight back in ``layout.shape`` and ``dtype``: ``code[index] · c'`` per element, in float32."""
    absmax = dequantize_absmax(tensors, layout)
    packed = tensors["packed"]
    if use_bnb and bitsandbytes_applies(packed, layout, dtype):
        return _bnb_dequantize()(packed, absmax, layout, dtype)
    # One look-up per byte gives both of its values: ~40x faster on CPU than unpacking nibbles first.
    pairs = torch.index_select(_byte_table(layout.quant_type, packed.device), 0, packed.reshape(-1).int())
    values = _times_block_scale(pairs.reshape(-1)[: layout.numel], absmax, layout.block_size)
    return values.reshape(layout.shape).to(dtype)


def _times_block_scale(values: torch.Tensor, scales: torch.Tensor, block_size: int) -> torch.Tensor:
    """``values`` (float32) times the scale of their block, a short last block included, as bitsandbytes does."""
    count = values.numel()
    full = count - count % block_size
    head = (values[:full].reshape(-1, block_size) * scales[: full // block_size].view(-1, 1)).reshape(full)
    if full == count:
        return head
    return torch.cat([head, values[full:] * scales[full // block_size]])


@functools.cache
def _byte_table(quant_type: str, device: torch.device) -> torch.Tensor:
    """(256, 2) table: byte b -> (code[b >> 4], code[b & 15]), the two values it packs."""
    code = code_book(quant_type, device)
    return torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)


@functools.cache
def _bnb_dequantize():
    """bitsandbytes' CUDA dequantisation, or None when it is not installed (it is never required)."""
    try:
        from bitsandbytes import functional as bnb_functional
    except Exception:  # not installed, or installed without a usable native library
        return None

    def run(packed: torch.Tensor, absmax: torch.Tensor, layout: NF4Layout, dtype: torch.dtype) -> torch.Tensor:
        # bitsandbytes' kernel reads (ceil(n/2), 1) bytes and one float32 absmax per block: ours, reshaped.
        out = torch.empty(layout.shape, dtype=dtype, device=packed.device)
        return bnb_functional.dequantize_4bit(
            packed.reshape(-1, 1), absmax=absmax.contiguous(), out=out,
            blocksize=layout.block_size, quant_type=layout.quant_type,
        )  # fmt: skip

    return run


def bitsandbytes_available() -> bool:
    """True when bitsandbytes can be imported and a CUDA device is present (the fast path is usable)."""
    return _bnb_dequantize() is not None and torch.cuda.is_available()


def bitsandbytes_applies(packed: torch.Tensor, layout: NF4Layout, dtype: torch.dtype) -> bool:
    """True when bitsandbytes' kernel will dequantise these tensors: on CUDA, block >= 64, a 16/32-bit dtype."""
    return (
        packed.is_cuda
        and layout.block_size >= 64
        and dtype in (torch.float32, torch.float16, torch.bfloat16)
        and _bnb_dequantize() is not None
    )


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes taken by the quantised tensors (what replaces the float weight in memory)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


__all__ = [
    "NF4Layout",
    "NF4_LEVELS",
    "QUANT_TYPES",
    "bitsandbytes_applies",
    "bitsandbytes_available",
    "code_book",
    "dequantize_absmax",
    "dequantize_nf4",
    "dynamic_map",
    "max_half_gap",
    "nf4_levels",
    "quantize_nf4",
    "stored_bytes",
]
