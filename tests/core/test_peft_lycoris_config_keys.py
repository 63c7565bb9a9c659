"""Every ``adapter_config.json`` key of PEFT's LoHaConfig and LoKrConfig is honoured or refused by name (issue 16).

The walk over ``dataclasses.fields`` fails when PEFT gains a field this project has not decided
about, so a new PEFT option is noticed rather than silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from lora_studio.core import get_adapter_config, load_adapter
from lora_studio.core.disk.peft_lycoris_format import HONOURED_KEYS, REFUSED_KEYS, lycoris_config_from_peft

peft = pytest.importorskip("peft")
from peft import LoHaConfig, LoKrConfig, get_peft_model  # noqa: E402

TOL = 1e-5


@pytest.mark.parametrize("config_class", [LoHaConfig, LoKrConfig], ids=["loha", "lokr"])
def test_every_peft_config_field_is_honoured_or_refused(config_class) -> None:
    undecided = [f.name for f in dataclasses.fields(config_class) if f.name not in HONOURED_KEYS | REFUSED_KEYS]
    assert undecided == [], f"PEFT's {config_class.__name__} has fields LoRA Studio neither honours nor refuses"
    assert not set(HONOURED_KEYS) & set(REFUSED_KEYS)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8)).eval()


def _peft_folder(tmp_path, config) -> tuple[nn.Module, dict]:
    peft_model = get_peft_model(_model(), config)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(str(tmp_path))
    return peft_model.eval(), json.loads((tmp_path / "adapter_config.json").read_text())


@pytest.mark.parametrize("key", sorted(REFUSED_KEYS) or ["(none in this PEFT)"])
def test_a_refused_key_with_a_value_is_refused_naming_it(key, tmp_path) -> None:
    if key not in REFUSED_KEYS:
        pytest.skip("PEFT 0.21 has no LoHa/LoKr key LoRA Studio refuses")
    peft_model, saved = _peft_folder(tmp_path, LoKrConfig(r=2, target_modules=["0"]))
    saved[key] = "set"
    with pytest.raises(ValueError, match=key):
        lycoris_config_from_peft(saved, {"0.lokr_w1": torch.zeros(1)}, _model())


@pytest.mark.parametrize("config_class", [LoHaConfig, LoKrConfig], ids=["loha", "lokr"])
def test_an_unknown_key_from_a_newer_peft_is_refused_by_name_unless_unset(config_class, tmp_path) -> None:
    _, saved = _peft_folder(tmp_path, config_class(r=2, target_modules=["0"]))
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved | {"hypothetical_option": 0.5}))
    with pytest.raises(ValueError, match=r"hypothetical_option=0\.5.*does not know"):
        load_adapter(_model(), tmp_path)
    for unset in (None, False, 0, [], {}):
        (tmp_path / "adapter_config.json").write_text(json.dumps(saved | {"hypothetical_option": unset}))
        load_adapter(_model(), tmp_path)


def test_every_honoured_key_set_away_from_its_default_loads_with_peft_s_outputs(tmp_path) -> None:
    config = LoKrConfig(
        r=3, alpha=5, target_modules=["0", "2"], exclude_modules=["1"], rank_pattern={"2": 2}, alpha_pattern={"2": 3},
        rank_dropout=0.2, module_dropout=0.1, rank_dropout_scale=True, use_effective_conv2d=True, decompose_both=True,
        decompose_factor=4, init_weights=False, layers_to_transform=None, inference_mode=False,
        base_model_name_or_path="somewhere", revision="v1",
    )  # fmt: skip
    peft_model, saved = _peft_folder(tmp_path, config)
    assert {k for k in saved if saved[k] not in (None, False)} <= set(HONOURED_KEYS)
    ours = load_adapter(copy.deepcopy(_model()), tmp_path).eval()
    settings = get_adapter_config(ours).variant_settings
    assert settings == {"rank_dropout": 0.2, "module_dropout": 0.1, "use_effective_conv2d": True,
                        "decompose_both": True, "decompose_factor": 4, "rank_dropout_scale": True}  # fmt: skip
    x = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peft_model(x), atol=TOL, rtol=0)
