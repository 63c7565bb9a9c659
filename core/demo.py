"""A self-contained engine demo: pretrain a tiny classifier, shift the domain, recover it with LoRA.

Runs offline on a CPU in a few seconds.  It is what ``lora-studio demo`` (and the
README's first command, until the window lands) shows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .adapters import attach, merge_and_unload
from .config import LoraConfig
from .counting import count_parameters


def _make_task(n: int, dims: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(classes, dims, generator=generator) * 2.0
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dims, generator=generator), labels


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return loss.item()


def run_engine_demo(steps: int = 150, rank: int = 4, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo, reporting each stage through ``log``; returns the accuracies and the merge error."""
    if steps < 1 or rank < 1:
        raise ValueError(f"steps and rank must be >= 1, got steps={steps}, rank={rank}")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dims, classes = 32, 6
    x, y = _make_task(2048, dims, classes, g)
    model = nn.Sequential(nn.Linear(dims, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, classes))
    log("1/4  pretraining a small classifier on the source domain ...")
    _fit(model, x, y, steps=200, lr=3e-3)
    rotation, _ = torch.linalg.qr(torch.randn(dims, dims, generator=g))
    shifted = x @ rotation  # the same classes seen through a rotated sensor: the base model fails
    results = {"source": _accuracy(model, x, y), "shifted_before": _accuracy(model, shifted, y)}
    log(f"     accuracy: source {results['source']:.1%}, shifted domain {results['shifted_before']:.1%}")

    config = LoraConfig(r=rank, alpha=2.0 * rank, targets=["0", "2"])
    attach(model, config)
    log(f"2/4  attached LoRA r={rank} to layers 0 and 2: {count_parameters(model)}")
    log(f"3/4  training the adapter for {steps} steps on the shifted domain ...")
    final_loss = _fit(model, shifted, y, steps=steps, lr=1e-2)
    results["shifted_after"] = _accuracy(model, shifted, y)
    log(f"     loss {final_loss:.3f}; shifted-domain accuracy {results['shifted_before']:.1%} -> "
        f"{results['shifted_after']:.1%}")

    with torch.no_grad():
        live = model(shifted)
    plain = merge_and_unload(model)
    with torch.no_grad():
        results["merge_max_diff"] = (plain(shifted) - live).abs().max().item()
    log(f"4/4  merged into a plain model: largest output difference {results['merge_max_diff']:.2e}")
    return results
