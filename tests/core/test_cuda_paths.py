"""The CUDA paths, where a GPU is: mixed precision keeps the adapters in float32, LoRA's gradients on CUDA
equal the formula's, and the 4-bit base equals bitsandbytes' own kernels.  Skipped cleanly without CUDA
(CI has none); ``bench/gpu_checks.sh`` runs this file with the GPU benchmarks.

Tolerances: float32 on CUDA with TF32 off (torch's default for matmul): 1e-5 against the same formula in
another order.  bitsandbytes' CUDA dequantisation multiplies code × scale once in float32, so it equals
the pure-PyTorch result bit for bit without double quantisation; with it, the kernel may fuse the scale's
``code · absmax₂ + offset`` into one FMA, so 2 float32 ulps are allowed there.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from run_configs import digits_run

from lora_studio.core import LoraConfig, attach
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.layers.nf4_format import NF4Layout, dequantize_nf4, quantize_nf4
from lora_studio.core.training import train
from lora_studio.core.training.events import Failed

CUDA = torch.cuda.is_available()
BNB = CUDA and importlib.util.find_spec("bitsandbytes") is not None
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (CI has none)")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_on_cuda_trains_and_keeps_the_adapter_in_float32(tmp_path, precision) -> None:
    events: list = []
    result = train(digits_run(tmp_path / precision, device="cuda", precision=precision, max_steps=6), events.append)
    assert result.status == "finished", [e for e in events if isinstance(e, Failed)]
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    factors = load_safetensors(tmp_path / precision / "adapter" / "adapter_model.safetensors")
    assert factors and all(t.dtype == torch.float32 for t in factors.values())


def test_lora_gradients_on_cuda_equal_the_formula() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 32).cuda()
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    model = attach(torch.nn.Sequential(base), LoraConfig(r=4, alpha=8, targets=["0"]))
    layer = model[0]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        b.normal_(0, 0.1)
    x = torch.randn(8, 64, device="cuda", requires_grad=True)
    model(x).square().sum().backward()
    a_ref, b_ref = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = torch.nn.functional.linear(x_ref, weight, bias) + 2.0 * (x_ref @ a_ref.t()) @ b_ref.t()
    out.square().sum().backward()
    for got, want in ((a.grad, a_ref.grad), (b.grad, b_ref.grad), (x.grad, x_ref.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not BNB, reason="needs bitsandbytes on CUDA")
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_the_4bit_base_equals_bitsandbytes_cuda_kernels(double_quant, quant_type) -> None:
    import bitsandbytes.functional as bnb_functional

    torch.manual_seed(3)
    weight = (torch.randn(512, 384) * 0.05).cuda()
    weight.view(-1)[::97] *= 20
    layout = NF4Layout((512, 384), 64, double_quant, 256, quant_type)
    ours = quantize_nf4(weight, layout)
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type=quant_type,
                                                 compress_statistics=double_quant)
    # The 4-bit codes depend on the float32 block scales alone, which both compute exactly.
    assert torch.equal(packed.reshape(-1), ours["packed"])
    if double_quant:
        assert torch.equal(state.state2.absmax, ours["nested_absmax"])
        apart = (state.absmax.int() - ours["absmax"].int()).abs()
        assert int(apart.max()) <= 1 and float((apart > 0).float().mean()) < 0.01, "scale codes one step at most"
        ours["absmax"] = state.absmax  # dequantise bitsandbytes' own codes on both sides
    else:
        assert torch.equal(state.absmax, ours["absmax"])
    theirs = bnb_functional.dequantize_4bit(packed, state)
    mine = dequantize_nf4(ours, layout, use_bnb=False)
    if double_quant:
        torch.testing.assert_close(mine, theirs, atol=0, rtol=2 * torch.finfo(torch.float32).eps)
    else:
        assert torch.equal(mine, theirs)


@pytest.mark.skipif(not BNB, reason="needs bitsandbytes on CUDA")
def test_the_base_handed_to_linear4bit_computes_the_same_on_cuda() -> None:
    from lora_studio.core.disk.bnb_4bit import to_bnb_linear4bit
    from lora_studio.core.layers.nf4_linear import NF4Linear

    torch.manual_seed(0)
    layer = NF4Linear.from_float(torch.nn.Linear(256, 128).cuda())
    theirs = to_bnb_linear4bit(layer)
    x = torch.randn(4, 256, device="cuda")
    torch.testing.assert_close(theirs(x), layer(x), atol=1e-4, rtol=1e-4)  # another matmul kernel, same weight
