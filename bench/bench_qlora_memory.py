"""QLoRA benchmark: base-weight memory of NF4 against float32 and bfloat16, and the step-time cost of
dequantising on the fly against a plain LoRA step on the same model (arXiv:2305.14314, section 3).

Peers in the same run: the same MLP (``--layers`` linear layers of ``--width``², float32) with
LoRA r=16 on every layer, once over the float32 base (plain LoRA) and once over the NF4 base
(QLoRA, double quantisation on and off), and -- where bitsandbytes and PEFT import -- PEFT's LoRA
over ``bnb.nn.Linear4bit`` layers holding the very same 4-bit bytes (``to_bnb_linear4bit``): the
QLoRA stack most users run.  Memory is counted in bytes of the stored tensors; time is the minimum
(and median) of interleaved training steps (forward, backward, AdamW step); on CUDA also the peak
memory of a step (``torch.cuda.max_memory_allocated``).

    .venv/bin/python bench/bench_qlora_memory.py             # --device cuda where a GPU is
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time

import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, variant_summary
from lora_studio.core.disk.bnb_4bit import to_bnb_linear4bit


def build(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*mods[:-1])


def peft_over_bnb(qlora_model: nn.Module, targets: list[str]) -> nn.Module | None:
    """PEFT's LoRA over bitsandbytes' Linear4bit layers holding ``qlora_model``'s 4-bit bases; None without them."""
    if importlib.util.find_spec("bitsandbytes") is None or importlib.util.find_spec("peft") is None:
        return None
    import peft

    model = copy.deepcopy(qlora_model)
    for name in targets:
        layer = model.get_submodule(name)
        setattr(model, name, to_bnb_linear4bit(layer.base_layer))
    return peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets))


def stepper(model: nn.Module, x: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    targets = [str(2 * i) for i in range(args.layers)]
    x = torch.randn(args.batch, args.width, device=args.device)

    lora = attach(build(args.width, args.layers).to(args.device), LoraConfig(r=16, alpha=32, targets=targets))
    runs = {"LoRA (float32 base)": stepper(lora, x)}
    reports = {}
    for dq in (True, False):
        settings = {"double_quant": dq}
        config = LoraConfig(r=16, alpha=32, targets=targets, variant="qlora", variant_settings=settings)
        model = attach(build(args.width, args.layers).to(args.device), config)
        name = f"QLoRA (NF4, double quant {'on' if dq else 'off'})"
        runs[name] = stepper(model, x)
        reports[name] = variant_summary(model)
        peer = peft_over_bnb(model, targets) if dq else None
        if peer is not None:
            runs["PEFT over bnb Linear4bit (same bytes)"] = stepper(peer, x)

    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, int] = {}
    for name, step in runs.items():  # warm-up: allocator, AdamW state; then one step's peak on CUDA
        step()
        if x.is_cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            peaks[name] = torch.cuda.max_memory_allocated() - before
    for _ in range(args.steps):  # interleaved, so a noisy neighbour hits every peer alike
        for name, step in runs.items():
            times[name].append(step())

    weights = args.layers * args.width * args.width
    fp32, bf16 = weights * 4, weights * 2
    print(
        f"model: {args.layers} x Linear({args.width}, {args.width}), {weights:,} base weights; LoRA r=16; "
        f"batch {args.batch}; device {args.device}"
    )
    print(f"{'base weights':34s} {'bytes':>12s} {'/ float32':>10s} {'/ bfloat16':>11s}")
    print(f"{'float32':34s} {fp32:12,d} {1.0:10.3f} {fp32 / bf16:11.3f}")
    print(f"{'bfloat16':34s} {bf16:12,d} {bf16 / fp32:10.3f} {1.0:11.3f}")
    for name, report in reports.items():
        nf4 = report["base_weight_bytes_nf4"]
        print(f"{name:34s} {nf4:12,d} {nf4 / fp32:10.3f} {nf4 / bf16:11.3f}")
    # The minimum is the step's own cost (a busy machine only adds to it); the median shows the spread.
    base_min, base_med = min(times[next(iter(times))]), statistics.median(times[next(iter(times))])
    print(
        f"\n{'training step, ' + str(args.steps) + ' runs':34s} {'min ms':>10s} {'/ LoRA':>8s} "
        f"{'median ms':>10s} {'/ LoRA':>8s}"
    )
    for name, samples in times.items():
        low, med = min(samples), statistics.median(samples)
        peak = f" {peaks[name] / 2**20:10.1f} MB step peak" if name in peaks else ""
        print(f"{name:34s} {low * 1000:10.2f} {low / base_min:8.2f} {med * 1000:10.2f} {med / base_med:8.2f}{peak}")
    kernel = any(r["bitsandbytes_kernel"] for r in reports.values())
    print(f"dequantisation kernel: {'bitsandbytes' if kernel else 'pure PyTorch'}")


if __name__ == "__main__":
    main()
