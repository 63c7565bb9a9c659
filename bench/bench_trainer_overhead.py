"""Step time of ``train()`` against a bare hand-written loop and against PEFT, same model and settings.

    .venv/bin/python bench/bench_trainer_overhead.py [--steps 60] [--width 1024] [--threads 1]

The model is an MLP on the 8×8 digits (64 → width → width → width → 10) with LoRA r=8 on
its three hidden linear layers and a trained head, batch 64, AdamW, gradient clipping
1.0, float32 on the CPU.  All three loops do the same work per step; the trainer adds
its data plan, events, NaN guards and metrics.  Steps are timed after a warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

FACTORY = textwrap.dedent("""
    from torch import nn
    WIDTH = {width}
    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                             nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10))
""")
TARGETS = ["1", "3", "5"]
BATCH, WARMUP = 64, 5


def _mlp(width: int) -> nn.Module:
    namespace: dict = {}
    exec(FACTORY.format(width=width), namespace)
    return namespace["mlp"]()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    from lora_studio.core.data import load_digits_tensors

    return load_digits_tensors("rotate")


def _hand_loop(model: nn.Module, steps: int) -> float:
    images, labels = _data()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    start = 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            start = time.perf_counter()
        idx = torch.randint(len(labels), (BATCH,), generator=g)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return (time.perf_counter() - start) / steps


def bare(width: int, steps: int) -> float:
    """Our adapter layers, a hand-written loop."""
    from lora_studio.core import LoraConfig, attach

    torch.manual_seed(0)
    model = attach(_mlp(width), LoraConfig(r=8, alpha=16, targets=TARGETS, modules_to_save=["7"]))
    return _hand_loop(model, steps)


def peft(width: int, steps: int) -> float:
    """PEFT's LoRA on the same model, the same hand-written loop."""
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_mlp(width), PeftConfig(r=8, lora_alpha=16, target_modules=TARGETS, modules_to_save=["7"]))
    return _hand_loop(model, steps)


def trainer(width: int, steps: int) -> float:
    """``train()`` on the same model and data."""
    from lora_studio.core import LoraConfig
    from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
    from lora_studio.core.training import StepMetrics, train

    folder = Path(tempfile.mkdtemp(prefix="bench-"))
    (folder / "mlp.py").write_text(FACTORY.format(width=width))
    config = RunConfig(
        model=ModelConfig(source="python", name=f"{folder / 'mlp.py'}:mlp"),
        data=DataConfig(kind="digits", shift="rotate"),
        lora=LoraConfig(r=8, alpha=16, targets=TARGETS),
        training=TrainingConfig(max_steps=steps + WARMUP, batch_size=BATCH, lr=1e-3, eval_every=0,
                                checkpoint_every=0, device="cpu", log_every=1, schedule="constant"),
        output=OutputConfig(dir=str(folder / "run"), tensorboard=False),
    )
    stamps: dict[int, float] = {}
    train(config, lambda e: stamps.__setitem__(e.step, time.perf_counter()) if isinstance(e, StepMetrics) else None)
    return (stamps[steps + WARMUP] - stamps[WARMUP]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noise on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times = {name: fn(args.width, args.steps) for name, fn in (("bare", bare), ("peft", peft), ("train", trainer))}
    for name, seconds in times.items():
        print(f"{name:>6}: {seconds * 1000:8.2f} ms/step")
    print(f"train() / bare loop: {times['train'] / times['bare']:.3f}")
    print(f"train() / PEFT loop: {times['train'] / times['peft']:.3f}")
    print(f"bare (our layers) / PEFT: {times['bare'] / times['peft']:.3f}")


if __name__ == "__main__":
    main()
