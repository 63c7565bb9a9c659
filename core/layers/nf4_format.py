"""4-bit NormalFloat (NF4) block-wise quantisation in plain PyTorch (QLoRA, Dettmers et al. 2023, arXiv:2305.14314).

One weight tensor becomes a handful of small tensors::

    W (any shape, float) ── flatten, pad with zeros ──► blocks of ``block_size`` values
        per block  c = max |w|                          (section 2, block-wise k-bit quantisation)
                   x = w / c ∈ [-1, 1] ──► nearest NF4 level, a 4-bit index   (section 3, NF4)
        two indices per byte, the first value in the high nibble  (bitsandbytes' order)
    optional double quantisation of the absmax values c             (section 3, double quantisation)
        c − mean(c) in blocks of ``double_quant_block_size``, scaled by its own absmax to
        8-bit floats (float8 e4m3), one float32 scale per block and one float32 mean

Dequantising reverses it: ``w' = level[index] · c'`` where ``c'`` is the (double-)dequantised
absmax.  The error bound per element is ``|w − w'| ≤ c · g/2 + |c − c'|`` with ``g`` the widest
gap between adjacent NF4 levels (0.3038, between −1 and −0.6962): the first term is rounding
to the nearest level, the second the double-quantisation error of the scale.

When bitsandbytes is installed and the tensors sit on a CUDA device, the 4-bit dequantisation
runs in its kernel (same code book, same packing); everything else is plain PyTorch.  The
stored format is the same either way, so a model quantised on one device loads on the other.
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

#: Largest finite float8 e4m3 value: the double-quantised scales use the whole range.
_FP8_MAX = 448.0


@dataclass(frozen=True)
class NF4Layout:
    """What is needed besides the tensors to undo the quantisation."""

    shape: tuple[int, ...]
    block_size: int = 64  # section 3: blocks of 64 for the weights
    double_quant: bool = True
    double_quant_block_size: int = 256  # section 3: blocks of 256 for the second quantisation

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def blocks(self) -> int:
        return -(-self.numel // self.block_size)


def nf4_levels(device: torch.device | str | None = None) -> torch.Tensor:
    """The NF4 code book as a float32 tensor (ascending)."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def max_half_gap() -> float:
    """Half the widest gap between adjacent NF4 levels: the rounding bound on a normalised value."""
    return max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])) / 2


# -- quantising ---------------------------------------------------------------------------------
def quantize_nf4(weight: torch.Tensor, layout: NF4Layout) -> dict[str, torch.Tensor]:
    """Quantise ``weight`` (float, ``layout.shape``) to NF4; returns the tensors to store.

    Keys: ``packed`` (uint8, two indices per byte) and either ``absmax`` (float32, one per block) or,
    with double quantisation, ``absmax_codes`` (uint8 float8-e4m3 bits), ``absmax_scales`` (float32)
    and ``absmax_offset`` (float32 scalar).
    """
    if tuple(weight.shape) != layout.shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} differs from the layout's {layout.shape}")
    blocks = _padded_blocks(weight.detach().float().reshape(-1), layout.block_size)
    absmax = blocks.abs().amax(dim=1)
    # An all-zero block would divide by zero; any divisor gives index 7 (level 0.0) there.
    normalised = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    levels = nf4_levels(weight.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    indices = torch.bucketize(normalised, midpoints).to(torch.uint8).reshape(-1)  # nearest level
    out = {"packed": (indices[0::2] << 4) | indices[1::2]}
    if layout.double_quant:
        out.update(_quantize_scales(absmax, layout.double_quant_block_size))
    else:
        out["absmax"] = absmax
    return out


def _padded_blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """``flat`` as rows of ``block_size``, the last one padded with zeros (they never raise an absmax)."""
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, block_size)


def _quantize_scales(absmax: torch.Tensor, block_size: int) -> dict[str, torch.Tensor]:
    """Double quantisation (section 3): centre the positive scales on their mean, then 8-bit floats."""
    offset = absmax.mean()
    blocks = _padded_blocks(absmax - offset, block_size)
    top = blocks.abs().amax(dim=1)
    scales = torch.where(top > 0, top / _FP8_MAX, torch.ones_like(top))
    # Clamped: a quotient a rounding step above 448 would become NaN in e4m3 (it has no infinity).
    scaled = (blocks / scales[:, None]).clamp(-_FP8_MAX, _FP8_MAX)
    codes = scaled.to(torch.float8_e4m3fn).view(torch.uint8).reshape(-1)[: absmax.numel()]
    return {"absmax_codes": codes, "absmax_scales": scales, "absmax_offset": offset.reshape(())}


# -- dequantising -------------------------------------------------------------------------------
def dequantize_absmax(tensors: dict[str, torch.Tensor], layout: NF4Layout) -> torch.Tensor:
    """The per-block scales ``c'`` in float32 (undoing double quantisation when it was used)."""
    if not layout.double_quant:
        return tensors["absmax"].float()
    codes = tensors["absmax_codes"]
    values = _padded_blocks(codes.view(torch.float8_e4m3fn).float(), layout.double_quant_block_size)
    scaled = values * tensors["absmax_scales"][:, None]
    return scaled.reshape(-1)[: codes.numel()] + tensors["absmax_offset"]


def dequantize_nf4(
    tensors: dict[str, torch.Tensor], layout: NF4Layout, dtype: torch.dtype = torch.float32, *, use_bnb: bool = True
) -> torch.Tensor:
    """The weight back in ``layout.shape`` and ``dtype``: ``level[index] · c'`` per element."""
    absmax = dequantize_absmax(tensors, layout)
    packed = tensors["packed"]
    if use_bnb and bitsandbytes_applies(packed, layout, dtype):
        return _bnb_dequantize()(packed, absmax, layout, dtype)
    # One look-up per byte gives both of its values: ~40x faster on CPU than unpacking nibbles first.
    pairs = torch.index_select(_byte_to_levels(packed.device), 0, packed.int())
    values = pairs.reshape(-1, layout.block_size) * absmax[:, None]
    return values.reshape(-1)[: layout.numel].reshape(layout.shape).to(dtype)


@functools.cache
def _byte_to_levels(device: torch.device) -> torch.Tensor:
    """(256, 2) table: byte b -> (level[b >> 4], level[b & 15]), the two values it packs."""
    levels = nf4_levels(device)
    return torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1)


@functools.cache
def _bnb_dequantize():
    """bitsandbytes' CUDA dequantisation, or None when it is not installed (it is never required)."""
    try:
        from bitsandbytes import functional as bnb_functional
    except Exception:  # not installed, or installed without a usable native library
        return None

    def run(packed: torch.Tensor, absmax: torch.Tensor, layout: NF4Layout, dtype: torch.dtype) -> torch.Tensor:
        # bitsandbytes stores (ceil(n/2), 1) bytes and one float32 absmax per block: our first bytes exactly.
        nbytes = -(-layout.numel // 2)
        out = torch.empty(layout.shape, dtype=dtype, device=packed.device)
        return bnb_functional.dequantize_4bit(
            packed[:nbytes].reshape(-1, 1), absmax=absmax.contiguous(), out=out,
            blocksize=layout.block_size, quant_type="nf4",
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
    "bitsandbytes_applies",
    "bitsandbytes_available",
    "dequantize_absmax",
    "dequantize_nf4",
    "max_half_gap",
    "nf4_levels",
    "quantize_nf4",
    "stored_bytes",
]
