"""Small run configs for the training tests: the digits demo cut down to run in a second or two."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lora_studio.core import LoraConfig
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import latest_checkpoint


def digits_run(out: Path, *, dropout: float = 0.0, **training) -> RunConfig:
    """The digits demo on 256 rotated digits, 16 per step, CPU; ``training`` overrides TrainingConfig fields."""
    settings = dict(max_steps=8, batch_size=16, lr=1e-2, eval_every=0, checkpoint_every=0, device="cpu", log_every=1)
    settings.update(training)
    return RunConfig(
        model=ModelConfig(source="demo", name="digits"),
        data=DataConfig(kind="digits", shift="rotate", max_samples=256),
        lora=LoraConfig(r=4, alpha=8, targets=["conv1", "conv2", "fc1"], dropout=dropout),
        training=TrainingConfig(**settings),
        output=OutputConfig(dir=str(out), tensorboard=False),
    )


def with_training(config: RunConfig, **changes) -> RunConfig:
    """A copy of ``config`` with some training fields changed."""
    return config.replace(training=dataclasses.replace(config.training, **changes))


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a run's newest checkpoint."""
    found = latest_checkpoint(run_dir)
    assert found is not None, f"{run_dir} has no checkpoint"
    return load_safetensors(found / "model.safetensors")
