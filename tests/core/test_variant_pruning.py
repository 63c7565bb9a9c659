"""Pruning-aware LoRA: gradual magnitude pruning of A and B on a cubic schedule.

Properties checked: a run ends with exactly ``round(target · numel)`` entries pruned in
every factor; the sparsity never falls, is zero before ``start`` and on target from
``end``; a pruned entry stays zero (stored and effective); each round prunes the
smallest magnitudes; merged output equals unmerged within MERGE_TOL.
"""

import pytest
import torch
from torch import nn
from variant_runs import attached, regression_problem, train

from lora_studio.core import LoraConfig, adapter_layers, attach, load_adapter, merge, save_adapter, variant_summary

MERGE_TOL = 1e-5
STEPS = 60
SETTINGS = {"target_sparsity": 0.6, "start": 0.2, "end": 0.6, "interval": 4}


def _pairs(model: nn.Module):
    """(stored factor, mask, effective factor) for every A and B."""
    for _, layer in adapter_layers(model):
        behaviour = layer.behaviours["default"]
        effective = behaviour.factors(layer, "default", "weight")
        yield from zip(layer.stored_factors("default", "weight"), behaviour.masks(layer, "default", "weight"), effective)


def test_a_run_ends_at_the_target_sparsity() -> None:
    model, x, y = attached("pruning", **SETTINGS)
    losses = train(model, x, y, steps=STEPS)
    assert losses[-1] < 0.5 * losses[0], "the adapter still learns while it is pruned"
    for stored, mask, effective in _pairs(model):
        expected = round(SETTINGS["target_sparsity"] * mask.numel())
        assert int((~mask).sum()) == expected
        assert int((effective == 0).sum()) == expected, "trained entries are non-zero; pruned ones are zero"
        assert int((stored == 0).sum()) == expected
    summary = variant_summary(model)
    assert summary["sparsity"] == pytest.approx(SETTINGS["target_sparsity"], abs=0.01)  # rounding per factor
    assert summary["target_sparsity"] == SETTINGS["target_sparsity"]


def test_sparsity_follows_the_schedule_and_pruned_entries_stay_zero() -> None:
    model, x, y = attached("pruning", **SETTINGS)
    history: list[float] = []
    masks_seen: list[list[torch.Tensor]] = []

    def observe(step: int) -> None:
        history.append(variant_summary(model)["sparsity"])
        masks_seen.append([m.clone() for _, m, _ in _pairs(model)])
        for stored, mask, effective in _pairs(model):  # every pruned entry is zero after every step
            assert torch.all(stored[~mask] == 0) and torch.all(effective[~mask] == 0)

    train(model, x, y, steps=STEPS, observe=observe)
    start, end = round(SETTINGS["start"] * STEPS), round(SETTINGS["end"] * STEPS)
    assert all(s == 0 for s in history[:start]), "nothing is pruned before start"
    assert all(b >= a for a, b in zip(history, history[1:])), "the sparsity never falls"
    assert history[end - 1] == pytest.approx(SETTINGS["target_sparsity"], abs=0.01), "on target at end"
    assert 0 < history[(start + end) // 2] < SETTINGS["target_sparsity"], "a gradual ramp, not one cut"
    for earlier, later in zip(masks_seen, masks_seen[1:]):
        assert all(torch.all(b <= a) for a, b in zip(earlier, later)), "a pruned entry never comes back"


def test_each_round_prunes_the_smallest_magnitudes() -> None:
    layer_model = nn.Sequential(nn.Linear(5, 4))
    attach(layer_model, LoraConfig(r=3, targets=["0"], variant="pruning"))
    layer = layer_model[0]
    a, b = layer.stored_factors("default", "weight")
    with torch.no_grad():  # distinct magnitudes with mixed signs, in a shuffled order
        for factor in (a, b):
            values = torch.arange(1, factor.numel() + 1, dtype=factor.dtype)
            signs = torch.where(torch.arange(factor.numel()) % 2 == 0, 1.0, -1.0)
            factor.copy_((values * signs)[torch.randperm(factor.numel())].view_as(factor))
    magnitudes = [f.detach().abs().clone() for f in (a, b)]
    behaviour = layer.behaviours["default"]
    for sparsity in (0.25, 0.5):
        behaviour.prune_to(layer, "default", sparsity)
        for magnitude, mask in zip(magnitudes, behaviour.masks(layer, "default", "weight")):
            pruned = round(sparsity * mask.numel())
            assert int((~mask).sum()) == pruned
            assert magnitude[~mask].max() < magnitude[mask].min(), "the pruned are the smallest"


def test_merge_is_exact_after_pruning() -> None:
    model, x, y = attached("pruning", **SETTINGS)
    train(model, x, y, steps=STEPS)
    with torch.no_grad():
        unmerged = model(x)
        merge(model)
        torch.testing.assert_close(model(x), unmerged, atol=MERGE_TOL, rtol=0)


def test_masks_are_saved_and_reloaded(tmp_path) -> None:
    model, x, y = attached("pruning", **SETTINGS)
    train(model, x, y, steps=STEPS)
    save_adapter(model, tmp_path)
    fresh = load_adapter(regression_problem()[0], tmp_path)
    assert all(torch.equal(m1, m2) for (_, m1, _), (_, m2, _) in zip(_pairs(model), _pairs(fresh)))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"target_sparsity": 1.0}, "target_sparsity"), ({"start": -0.1}, "start"), ({"start": 0.5, "end": 0.5}, "end"),
     ({"end": 1.5}, "end"), ({"interval": 0}, "interval"), ({"interval": 2.0}, "interval")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(settings: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^variant_settings\.{field} "):
        LoraConfig(variant="pruning", variant_settings=settings)
