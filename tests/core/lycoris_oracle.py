"""PEFT as an outside oracle for LoHa and LoKr: write our adapter in its format, load it there, and back.

The folder is written here from :mod:`lora_studio.core.disk.peft_lycoris_format` alone (not through
``save_adapter``), so these tests prove the mapping itself; wiring it into ``save_adapter``/
``load_adapter`` is a separate step.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tiny_models import run
from torch import nn

from lora_studio.core import attach
from lora_studio.core.disk.peft_lora_format import PEFT_PREFIX, adapter_tensors
from lora_studio.core.disk.peft_lycoris_format import (
    lycoris_config_from_peft,
    lycoris_peft_config_dict,
    lycoris_peft_state_dict,
)

TOL = 1e-5  # two independent float32 implementations of the same update: only summation order differs


def write_peft_folder(model: nn.Module, folder: Path, adapter_name: str = "default") -> Path:
    """Our adapter as PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lycoris_peft_state_dict(model, adapter_name), str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(lycoris_peft_config_dict(model, adapter_name)))
    return folder


def peft_loads(folder: Path, base: nn.Module) -> nn.Module:
    """PEFT's model for ``folder``; fails on any missing or unexpected adapter key."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys.*")
        model = PeftModel.from_pretrained(base, str(folder))
    result = model.load_adapter(str(folder), adapter_name="check")
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if "hada_" in k or "lokr_" in k] == []
    model.set_adapter("default")
    return model.eval()


def perturb_peft(model: nn.Module, std: float = 0.2, seed: int = 3) -> None:
    """Give PEFT's LoHa/LoKr factors random values (its init leaves the update at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def load_peft_saved(folder: Path, base: nn.Module) -> nn.Module:
    """Attach what PEFT saved in ``folder`` to ``base`` through our mapping; every key must fit exactly."""
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    model = attach(base, lycoris_config_from_peft(peft_config, tensors, base))
    ours = adapter_tensors(model, "default")
    assert set(ours) == set(tensors)
    with torch.no_grad():
        for key, target in ours.items():
            assert target.shape == tensors[key].shape, key
            target.copy_(tensors[key])
    return model.eval()


def assert_same_outputs(ours: nn.Module, theirs: nn.Module, base: nn.Module, inputs: object) -> None:
    """Our adapted model and PEFT's agree within TOL, and the adapter really changes the base output."""
    with torch.no_grad():
        assert (run(ours, inputs) - run(base, inputs)).abs().max() > 100 * TOL, "the adapter changes the output"
        torch.testing.assert_close(run(theirs, inputs), run(ours, inputs), atol=TOL, rtol=0)
