"""The forward path is a declared choice: every variant runs the path its behaviour declares.

A behaviour declaring ``forward_path = "standard"`` lets a Linear layer take its fast paths (the
update folded into the weight, or the fused autograd function); one declaring ``"own"`` runs its
own methods op by op.  For every registered variant this checks that the declared path is the
one that runs, and that it gives the op-by-op output (FAST_TOL, float32) and gradients.  A class
that would change the path without declaring it is refused when it is defined.
"""

import pytest
import torch
from torch import nn

from lora_studio.core import AdapterBehaviour, LoraConfig, adapter_layers, attach, available_variants, variant_inputs
from lora_studio.core.layers import AdapterLayer, LinearLora, linear

FAST_TOL = 1e-5
BATCH = 64  # folding pays from 2·16·24/40 ≈ 19 tokens on, so both fast paths are in reach


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8))


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of the two fast paths the Linear wrapper can take."""
    calls = {"fused": 0, "folded": 0}
    for name in calls:
        real = getattr(linear, f"{name}_lora")

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(linear, f"{name}_lora", counted)
    return calls


def _forward_backward(model: nn.Module, x: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with variant_inputs(model, **inputs):
        out = model(x)
    out.pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return out.detach(), grads


@pytest.mark.parametrize("variant", available_variants(), ids=lambda v: v.name)
def test_the_declared_forward_path_runs_and_matches_op_by_op(variant, monkeypatch: pytest.MonkeyPatch) -> None:
    model = attach(_model(), LoraConfig(r=8, alpha=16, targets=["0", "2"], variant=variant.name))
    layers = [layer for _, layer in adapter_layers(model)]
    declared = {layer.behaviours["default"].forward_path for layer in layers}
    assert len(declared) == 1, "one variant, one declared path"
    with torch.no_grad():
        for layer in layers:
            for p in layer.adapter_parameters("default"):
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(BATCH, 16)
    inputs = variant.example_inputs(BATCH)
    calls = _spy(monkeypatch)
    out, grads = _forward_backward(model, x, inputs)
    if declared == {"standard"}:
        assert calls["fused"] + calls["folded"] == len(layers), "each adapted layer takes a fast path"
    else:
        assert calls == {"fused": 0, "folded": 0}, "a behaviour with its own forward runs it op by op"
    for layer in layers:
        layer.limit_fast_paths("none")
    calls.update(fused=0, folded=0)
    expected, expected_grads = _forward_backward(model, x, inputs)
    assert calls == {"fused": 0, "folded": 0}
    torch.testing.assert_close(out, expected, atol=FAST_TOL, rtol=FAST_TOL)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=FAST_TOL, rtol=FAST_TOL)


def test_limit_fast_paths_lowers_and_restores_the_declared_path(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = attach(_model(), LoraConfig(r=2, targets=["0"])).get_submodule("0")
    calls = _spy(monkeypatch)
    x = torch.randn(BATCH, 16)
    layer(x).sum().backward()
    assert calls == {"fused": 0, "folded": 1}
    layer.limit_fast_paths("fused")
    layer(x).sum().backward()
    assert calls == {"fused": 1, "folded": 1}
    layer.limit_fast_paths("folded")  # no limit: the class's declaration again
    assert layer.fast_paths == LinearLora.fast_paths
    with pytest.raises(ValueError, match="fastest must be one of none, fused, folded"):
        layer.limit_fast_paths("fastest")


def test_a_behaviour_or_layer_that_changes_the_path_must_declare_it() -> None:
    with pytest.raises(TypeError, match="overrides factors: declare forward_path = 'own'"):
        class Masked(AdapterBehaviour):
            def factors(self, layer, adapter, key):
                return super().factors(layer, adapter, key)

    with pytest.raises(TypeError, match="overrides delta_weight: declare update_form"):
        class Scaled(AdapterBehaviour):
            forward_path = "own"

            def delta_weight(self, layer, adapter, key):
                return 2 * super().delta_weight(layer, adapter, key)

    with pytest.raises(TypeError, match="overrides merge: declare merge_is_per_slot"):
        class Logged(AdapterBehaviour):
            def merge(self, layer, adapter, untie):
                super().merge(layer, adapter, untie)

    with pytest.raises(TypeError, match="defines its own projections: declare fast_paths"):
        class Doubled(LinearLora):
            def project_up(self, h, b, adapter):
                return 2 * super().project_up(h, b, adapter)

    with pytest.raises(TypeError, match="fast_paths must be one of"):
        class Unknown(AdapterLayer):
            fast_paths = "warp"
