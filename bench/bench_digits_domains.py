"""The multi-domain example at full demo length: two digits domains, an adapter each, and their combinations.

Issue 14.  The digits demo's base (a small CNN pretrained on upright 8×8 digits) meets two domains
it never saw: ``rotate`` (a quarter turn) and ``mirror`` (left-right flip).  Printed: top-1 accuracy
on the validation split (359 digits) of the upright digits and of both domains, for

* the base;
* the demo's own runs (``train()`` on ``demo_config("digits")`` with the shift changed, the demo's
  300 steps): each trains LoRA r=4 on conv1, conv2, fc1 *and* the head fc2 fully
  (``modules_to_save``), so each run has its own head and the two cannot be combined (refused, as
  PEFT refuses it);
* LoRA-only adapters (the same LoRA, the pretrained head kept frozen; a run always adds the head,
  so these are trained with the engine's pieces: ``build_model`` / ``attach`` / AdamW, lr 1e-2,
  batch 32, the same number of steps), both on one base;
* every ``add_weighted_adapter`` method on the two LoRA-only adapters, weights 0.5/0.5, density 0.5
  where the method prunes (DARE seeded with ``torch.manual_seed(0)``).

Nothing here is timed; it is the accuracy table the issue asks for (tests/e2e/test_digits_domains.py
checks what must hold at a shorter length).

    .venv/bin/python bench/bench_digits_domains.py [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch
from torch import nn

from lora_studio.core import (
    COMBINATION_TYPES,
    DENSITY_COMBINATIONS,
    ModelConfig,
    add_weighted_adapter,
    attach,
    combination_problem,
    demo_config,
    load_adapter,
    load_model,
    set_adapter,
    train,
)
from lora_studio.core.data.digits import digits_split, load_digits_tensors
from lora_studio.core.training import build_model

SHIFTS = ("rotate", "mirror")
COLUMNS = ("none", "rotate", "mirror")


@torch.no_grad()
def accuracies(model: nn.Module) -> dict[str, float]:
    """Top-1 validation accuracy on each column's domain."""
    model.eval()
    found = {}
    for shift in COLUMNS:
        images, labels = load_digits_tensors(shift)
        _, held_out = digits_split(len(labels))
        found[shift] = (model(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    return found


def digits_base() -> nn.Module:
    """A fresh pretrained digits base."""
    return load_model(ModelConfig(source="demo", name="digits")).model.eval()


def run_adapter(shift: str, steps: int, out: Path) -> Path:
    """The demo's run on ``shift`` (trained head included); its adapter folder."""
    config = demo_config("digits", output_dir=out / f"run-{shift}", steps=steps)
    config = config.replace(
        data=dataclasses.replace(config.data, shift=shift),
        training=dataclasses.replace(config.training, device="cpu", eval_every=0, checkpoint_every=0,
                                     eval_at_start=False),
    )
    result = train(config)
    if result.status != "finished":
        raise SystemExit(f"the {shift} run failed: {result.error}")
    return Path(result.adapter_dir)


def train_lora_only(model: nn.Module, shift: str, steps: int, seed: int = 0) -> None:
    """Attach LoRA ``shift`` (the demo's r=4 on conv1, conv2, fc1; the head frozen) and train it on ``shift``."""
    attach(model, demo_config("digits", output_dir="unused").lora, shift)
    set_adapter(model, shift)
    images, labels = load_digits_tensors(shift)
    train_idx, _ = digits_split(len(labels))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = train_idx[torch.randint(0, len(train_idx), (32,), generator=order)]
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per adapter (the demo's length: 300)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: the same numbers on any machine size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, dict[str, float]]] = [("base", accuracies(digits_base()))]

    with tempfile.TemporaryDirectory() as tmp:
        folders = {shift: run_adapter(shift, args.steps, Path(tmp)) for shift in SHIFTS}
        runs = digits_base()
        for shift in SHIFTS:
            load_adapter(runs, folders[shift], adapter_name=shift)
        for shift in SHIFTS:
            set_adapter(runs, shift)
            rows.append((f"run '{shift}' (LoRA + trained head)", accuracies(runs)))
        refused = combination_problem(runs, list(SHIFTS), [0.5, 0.5], "cat")

    torch.manual_seed(0)
    model = build_model(demo_config("digits", output_dir="unused"), attach_adapter=False)[0].model
    for shift in SHIFTS:
        train_lora_only(model, shift, args.steps)
    for shift in SHIFTS:
        set_adapter(model, shift)
        rows.append((f"LoRA-only '{shift}'", accuracies(model)))
    for method in COMBINATION_TYPES:
        torch.manual_seed(0)  # DARE drops at random
        density = 0.5 if method in DENSITY_COMBINATIONS else None
        add_weighted_adapter(model, list(SHIFTS), [0.5, 0.5], method, combination_type=method, density=density)
        set_adapter(model, method)
        rows.append((f"{method} 0.5/0.5" + (", density 0.5" if density else ""), accuracies(model)))

    print(f"{args.steps} steps per adapter, validation accuracy (359 digits per domain)\n")
    print("| adapter | upright (none) | rotate | mirror |")
    print("| --- | --- | --- | --- |")
    for label, found in rows:
        print(f"| {label} | " + " | ".join(f"{found[c]:.3f}" for c in COLUMNS) + " |")
    print(f"\nthe two runs' adapters combined: refused — {refused}")


if __name__ == "__main__":
    main()
