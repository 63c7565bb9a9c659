"""LoHa and LoKr through save_adapter/load_adapter: PEFT's LOHA/LOKR folders, both ways.

Our folder loads in PEFT with no missing or unexpected keys and equal outputs, and a folder
PEFT saved loads through load_adapter with equal outputs (TOL), with no warning about a
different base.
"""

import copy
import warnings

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model

from lora_studio.core import LoraConfig, attach, load_adapter, save_adapter

TOL = 1e-5


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)).eval()


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_ours_loads_in_peft_and_back(variant: str, tmp_path) -> None:
    base = _base()
    model = attach(copy.deepcopy(base), LoraConfig(r=4, alpha=8, targets=["0", "2"], variant=variant))
    _perturb(model)
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = model(x)
        assert (expected - base(x)).abs().max() > 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_adapter(model, tmp_path)
        ours = load_adapter(copy.deepcopy(base), tmp_path)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, atol=TOL, rtol=0)
        torch.testing.assert_close(peft_model(x), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "peft_config",
    [LoHaConfig(r=4, alpha=8, target_modules=["0", "2"]), LoKrConfig(r=4, alpha=8, target_modules=["0", "2"])],
    ids=["loha", "lokr"],
)
def test_peft_folder_loads_here(peft_config, tmp_path) -> None:
    base = _base()
    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(base), peft_config)
    _perturb(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    x = torch.randn(5, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = load_adapter(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peft_model.eval()(x), atol=TOL, rtol=0)
