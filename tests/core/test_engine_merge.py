"""Fresh adapters are the identity; merged, unmerged and unloaded models agree; unmerge restores the base.

Tolerances: a fresh adapter must give the base output within IDENTITY_TOL; merged vs unmerged
outputs agree within each case's ``tolerance`` (1e-5 in float32; 1e-4 for networks with
convolutions, whose outputs sum many more products and so more rounding).
"""

import copy

import pytest
import torch
from tiny_models import ALL_CASES, Case, perturb_adapters, run

from lora_studio.core import (
    AdapterLayer,
    LoraConfig,
    adapter_layers,
    attach,
    merge,
    merge_and_unload,
    unmerge,
)

IDENTITY_TOL = 1e-6
WEIGHT_RESTORE_TOL = 1e-6


def _attached(case: Case, **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = case.build()
    model = attach(copy.deepcopy(base), LoraConfig(r=4, targets=case.targets, modules_to_save=case.modules_to_save,
                                                   **overrides))
    return base, model


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_fresh_adapter_is_identity(case: Case, init: str) -> None:
    base, model = _attached(case, init=init)
    assert any(True for _ in adapter_layers(model)), "nothing was wrapped"
    x = case.make_input()
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), run(base, x), atol=IDENTITY_TOL, rtol=0)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_merged_equals_unmerged_equals_unloaded(case: Case) -> None:
    base, model = _attached(case)
    perturb_adapters(model)
    x = case.make_input()
    with torch.no_grad():
        base_out = run(base, x)
        unmerged = run(model, x)
        assert (unmerged - base_out).abs().max() > 100 * case.tolerance, "the adapters must change the output"
        merge(model)
        assert all(layer.merged for _, layer in adapter_layers(model))
        merged = run(model, x)
        torch.testing.assert_close(merged, unmerged, atol=case.tolerance, rtol=0)
        merge(model)  # idempotent: a second merge changes nothing
        torch.testing.assert_close(run(model, x), merged, atol=0, rtol=0)
        plain = merge_and_unload(copy.deepcopy(model))
        assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
        torch.testing.assert_close(run(plain, x), unmerged, atol=case.tolerance, rtol=0)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_unmerge_restores_base_weights(case: Case) -> None:
    base, model = _attached(case)
    perturb_adapters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
    merge(model)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, "merging must change some base weight"
    unmerge(model)
    unmerge(model)  # idempotent
    for name, weight in model.named_parameters():
        if name in before:
            torch.testing.assert_close(weight, before[name], atol=WEIGHT_RESTORE_TOL, rtol=0)
    assert not any(layer.merged for _, layer in adapter_layers(model))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_base_merges_in_float32(dtype: torch.dtype) -> None:
    """Merging into a half-precision base: the result equals the float32 merge rounded once."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 48)).to(dtype)
    model = attach(copy.deepcopy(layer), LoraConfig(r=4, targets=["0"]))
    wrapper = model[0]
    assert wrapper.lora_A["default"].weight.dtype == torch.float32, "adapters stay in float32"
    perturb_adapters(model, std=0.05)
    expected = (layer[0].weight.float() + wrapper.delta_weight("default")).to(dtype)
    merge(model)
    assert torch.equal(wrapper.base_layer.weight, expected)
    x = torch.randn(3, 64).to(dtype)
    assert model(x).dtype == dtype


def test_merge_refuses_non_finite_update_and_touches_nothing() -> None:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    model = attach(layers, LoraConfig(r=2, targets=["0", "1"]))
    perturb_adapters(model)
    with torch.no_grad():
        model[1].lora_B["default"].weight[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"NaN or Inf.*'1'|'1'.*NaN or Inf"):
        merge(model)
    for old, new in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(new, old, atol=0, rtol=0, equal_nan=True)
    assert not any(layer.merged for _, layer in adapter_layers(model))
