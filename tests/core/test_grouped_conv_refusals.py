"""What LoRA on a grouped convolution cannot do is refused before anything changes, by name: a merge
(even when other layers could merge), a combination of adapters, and, in the layer tree the window
previews, a rank the groups cannot split or a variant that cannot adapt a layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_studio.core import LoraConfig, add_weighted_adapter, attach, combination_problem, describe, merge
from lora_studio.core.layers import MergeNotSupportedError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 3 * 3, 3))


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


def test_merge_is_refused_before_any_layer_changes() -> None:
    model = _model()
    attach(model, LoraConfig(r=2, targets=["0", "1"]))
    _perturbed(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MergeNotSupportedError, match="'1'.*no weight was changed"):
        merge(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # layer 0 (mergeable) untouched too


@pytest.mark.parametrize("method", ["cat", "svd", "linear"])
def test_combining_adapters_on_a_grouped_conv_is_refused_by_name(method) -> None:
    model = _model()
    for name in ("a", "b"):
        attach(model, LoraConfig(r=2, targets=["1"]), adapter_name=name)
    _perturbed(model)
    problem = combination_problem(model, ["a", "b"], [0.5, 0.5], method)
    assert problem is not None and "grouped convolution" in problem and "'1'" in problem
    with pytest.raises(ValueError, match="grouped convolution"):
        add_weighted_adapter(model, ["a", "b"], [0.5, 0.5], "ab", combination_type=method)


def test_the_layer_tree_names_what_attach_would_refuse_instead_of_raising() -> None:
    tree = describe(_model(), LoraConfig(r=3, targets=["1"]))
    node = next(n for n in tree.walk() if n.name == "1")
    assert "divisible by 2" in node.problem
    tree = describe(nn.Sequential(nn.MultiheadAttention(8, 2)), LoraConfig(r=2, targets=["0"], variant="dora"))
    node = next(n for n in tree.walk() if n.name == "0")
    assert "cannot adapt layer '0'" in node.problem
