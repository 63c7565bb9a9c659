"""Sparse LoRA: fixed random masks on A and B.

Properties checked: each factor has exactly ``round(sparsity · numel)`` entries off,
effective and stored; masked entries stay zero through training while the others
train; the merged weight is ``W + s·(B⊙M_B)(A⊙M_A)`` and merged output equals unmerged
within MERGE_TOL; masks depend on the seed and the layer, are saved and reloaded,
and are never parameters (no optimizer or count sees them).
"""

import pytest
import torch
from torch import nn
from variant_runs import attached, regression_problem, train

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    count_parameters,
    load_adapter,
    merge,
    optimizer_param_groups,
    save_adapter,
    variant_summary,
)

MERGE_TOL = 1e-5


def _effective_and_stored(model: nn.Module):
    """(layer name, effective factor, stored factor, mask) for every A and B."""
    for name, layer in adapter_layers(model):
        behaviour = layer.behaviours["default"]
        effective = behaviour.factors(layer, "default", "weight")
        stored = layer.stored_factors("default", "weight")
        masks = behaviour.masks(layer, "default", "weight")
        yield from ((name, e, s, m) for e, s, m in zip(effective, stored, masks))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75])
def test_fraction_of_zero_entries_is_the_sparsity(sparsity: float) -> None:
    model, x, y = attached("sparse", sparsity=sparsity)
    train(model, x, y, steps=5)  # B leaves zero, so every zero left is a masked one
    for _, effective, stored, mask in _effective_and_stored(model):
        expected = round(sparsity * mask.numel())
        assert int((effective == 0).sum()) == expected
        assert int((stored == 0).sum()) == expected
        assert int((~mask).sum()) == expected


def test_conv_and_embedding_factors_get_masks_of_their_shape() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Embedding(30, 4))
    attach(model, LoraConfig(r=4, targets=["0", "2"], variant="sparse", variant_settings={"sparsity": 0.5}))
    for _, layer in adapter_layers(model):
        for factor, mask in zip(
            layer.stored_factors("default", "weight"), layer.behaviours["default"].masks(layer, "default", "weight")
        ):
            assert mask.shape == factor.shape and mask.dtype == torch.bool
            assert int((~mask).sum()) == round(0.5 * mask.numel())


def test_masked_entries_stay_zero_and_the_rest_train() -> None:
    model, x, y = attached("sparse", sparsity=0.5)
    before = [(s.detach().clone(), m.clone()) for _, _, s, m in _effective_and_stored(model)]
    losses = train(model, x, y, steps=60)
    assert losses[-1] < 0.5 * losses[0]
    for (start, mask_before), (_, effective, stored, mask) in zip(before, _effective_and_stored(model)):
        assert torch.equal(mask, mask_before), "the masks are fixed"
        assert torch.all(effective[~mask] == 0) and torch.all(stored[~mask] == 0)
        assert torch.all(stored[mask] != start[mask]), "every unmasked entry trains"


def test_merge_is_exact_and_uses_the_masked_factors() -> None:
    model, x, _ = attached("sparse", sparsity=0.6)
    with torch.no_grad():  # non-zero values everywhere, masked entries included: the masks must hide them
        for _, layer in adapter_layers(model):
            for p in layer.adapter_parameters("default"):
                p.normal_(std=0.3)
    layer = model[0]
    a, b = layer.stored_factors("default", "weight")
    mask_a, mask_b = layer.behaviours["default"].masks(layer, "default", "weight")
    expected_delta = layer.scaling["default"] * (b * mask_b) @ (a * mask_a)
    torch.testing.assert_close(layer.delta_weight("default"), expected_delta, atol=MERGE_TOL, rtol=0)
    with torch.no_grad():
        unmerged = model(x)
        merge(model)
        torch.testing.assert_close(model(x), unmerged, atol=MERGE_TOL, rtol=0)


def _masks(model: nn.Module) -> list[torch.Tensor]:
    return [m.clone() for _, _, _, m in _effective_and_stored(model)]


def test_masks_follow_the_seed_and_differ_between_layers() -> None:
    same = [_masks(attached("sparse", mask_seed=5)[0]) for _ in range(2)]
    other = _masks(attached("sparse", mask_seed=6)[0])
    assert all(torch.equal(a, b) for a, b in zip(*same)), "the same seed gives the same masks"
    assert not all(torch.equal(a, b) for a, b in zip(same[0], other)), "another seed gives other masks"
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))  # two layers of one shape
    attach(twin, LoraConfig(r=4, targets=["0", "1"], variant="sparse"))
    first, second = (
        layer.behaviours["default"].masks(layer, "default", "weight")[0] for _, layer in adapter_layers(twin)
    )
    assert not torch.equal(first, second), "each layer draws its own mask"


def test_masks_are_buffers_saved_and_reloaded(tmp_path) -> None:
    model, x, y = attached("sparse", sparsity=0.4)
    optimizer_ids = {id(p) for group in optimizer_param_groups(model, lr=1e-3) for p in group["params"]}
    mask_ids = {id(m) for _, _, _, m in _effective_and_stored(model)}
    assert not optimizer_ids & mask_ids, "the optimizer never sees a mask"
    lora, _, _ = attached("lora")
    assert count_parameters(model).adapter == count_parameters(lora).adapter, "masks are not counted as parameters"
    train(model, x, y, steps=10)
    save_adapter(model, tmp_path)
    fresh = load_adapter(regression_problem()[0], tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), _masks(fresh)))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)
    assert variant_summary(fresh)["sparsity"] == pytest.approx(variant_summary(model)["sparsity"], abs=0)


def test_summary_reports_the_sparsity() -> None:
    model, _, _ = attached("sparse", sparsity=0.25)
    summary = variant_summary(model)
    total = sum(m.numel() for _, _, _, m in _effective_and_stored(model))
    masked = sum(round(0.25 * m.numel()) for _, _, _, m in _effective_and_stored(model))
    assert summary["sparsity"] == pytest.approx(masked / total, abs=1e-12)
    assert set(summary["layer_sparsity"]) == {"0", "2"}


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"sparsity": True}, "sparsity"),
     ({"mask_seed": -1}, "mask_seed"), ({"mask_seed": 1.5}, "mask_seed")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(settings: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^variant_settings\.{field} "):
        LoraConfig(variant="sparse", variant_settings=settings)


def test_pissa_init_is_refused_and_the_model_left_alone() -> None:
    model = nn.Sequential(nn.Linear(6, 6))
    weight = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="PiSSA"):
        attach(model, LoraConfig(r=2, targets=["0"], variant="sparse", init="pissa"))
    assert isinstance(model[0], nn.Linear) and torch.equal(model[0].weight, weight)
