"""Write ``data/bnb_4bit_fixture.safetensors``: weights quantised by bitsandbytes itself, in the layout its
``Linear4bit`` saves (``W``, ``W.absmax``, ``W.quant_map``, ``W.nested_absmax``, ``W.nested_quant_map``,
``W.quant_state.bitsandbytes__nf4|fp4``), with bitsandbytes' reference dequantised result under ``expected.W``
and the float weight it quantised under ``source.W``.

The oracle for ``tests/core/test_bnb_4bit.py``; run it once where bitsandbytes imports (its CPU backend
is enough): ``python tests/core/make_bnb_4bit_fixture.py``.
"""

from pathlib import Path

import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

CASES = {  # name: (shape, dtype, quant_type, nested)
    "nf4_nested": ((64, 96), torch.float32, "nf4", True),
    "nf4_plain": ((48, 32), torch.bfloat16, "nf4", False),
    "nf4_ragged": ((10, 13), torch.float32, "nf4", True),  # 130 values: a short last block
    "fp4_nested": ((32, 64), torch.float16, "fp4", True),
}


def reference_dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' own reference dequantisation (its default backend, which states it matches the C++/CUDA
    kernels), scales through its blockwise dequantiser.  Not ``F.dequantize_4bit`` on a CPU: in 0.50.2 its
    AVX512 kernel reads the scales of double-quantised weights differently from that reference (on the first
    weight here, blocks 1 and 2 both took scale 1), while CUDA checkpoints follow the reference."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = state.absmax
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), state.code, state.blocksize, state.shape,
                                    state.dtype)


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (shape, dtype, quant_type, nested) in CASES.items():
        weight = (torch.randn(shape, generator=generator) * 0.05).to(dtype)
        packed, state = F.quantize_4bit(weight, blocksize=64, quant_type=quant_type, compress_statistics=nested)
        tensors[name] = packed
        for key, value in state.as_dict(packed=True).items():
            tensors[f"{name}.{key}"] = value
        tensors[f"expected.{name}"] = reference_dequantize(packed, state)
        tensors[f"source.{name}"] = weight
    out = Path(__file__).parent / "data" / "bnb_4bit_fixture.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    print(f"wrote {out}: {', '.join(CASES)}")


if __name__ == "__main__":
    main()
