"""AdaLoRA: SVD-form adapters, orthogonality penalty, importance scores and the rank budget.

Properties checked: a run ends with exactly ``target_rank × adapted weights`` singular
values in use, and the summary reports each layer's final rank; the total rank is the
initial one until ``tinit``, never grows, and follows the budget; merge is exact with
the mask in force (masked λ hidden even when non-zero); the penalty is zero for
orthonormal P, Q and 9r for P scaled by 2 (hand-checked); the smoothed sensitivity and
uncertainty equal PEFT's RankAllocator on the same gradients (PEFT_TOL, the gap being
PEFT's ``ranknum + 1e-5`` in the scale), and the triplets kept for a budget are PEFT's.
"""

import copy

import pytest
import torch
from torch import nn
from variant_runs import attached, regression_problem, train

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    after_optimizer_step,
    attach,
    load_adapter,
    merge,
    regularization_loss,
    save_adapter,
    variant_summary,
)
from lora_studio.core.variants.adalora import allocate_budget, triplet_groups

MERGE_TOL = 1e-5
PEFT_TOL = 1e-4
STEPS = 60
LR = 5e-2  # Λ starts at zero and P, Q at std 0.02: a short run needs a brisk rate to move off the base
SCHEDULE = {"tinit": 0.2, "tfinal": 0.6, "delta_t": 3}


def _ranks(model: nn.Module) -> list[int]:
    return [behaviour.rank(layer, "default", key) for _, layer, behaviour, key in triplet_groups(model, "default")]


class _Attention(nn.Module):
    """One MultiheadAttention: two adapted weights (in_proj_weight, out_proj.weight) in one layer."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_a_run_ends_at_the_target_total_rank() -> None:
    model, x, y = attached("adalora", r=4, target_rank=2, **SCHEDULE)
    losses = train(model, x, y, steps=STEPS, lr=LR)
    assert losses[-1] < 0.5 * losses[0]
    assert sum(_ranks(model)) == 2 * 2, "target_rank × two adapted layers"
    summary = variant_summary(model)
    assert summary["final_ranks"] == dict(zip(["0", "2"], _ranks(model)))
    assert summary["total_rank"] == summary["target_total_rank"] == 4
    assert summary["initial_total_rank"] == 8


def test_weight_space_layers_count_each_weight() -> None:
    torch.manual_seed(0)
    model = attach(_Attention(), LoraConfig(r=4, targets=["attn"], variant="adalora",
                                            variant_settings={"target_rank": 1, **SCHEDULE}))  # fmt: skip
    x = torch.randn(16, 5, 8)
    train(model, x, torch.randn(16, 5, 8) * 0.1, steps=STEPS, lr=LR)
    summary = variant_summary(model)
    assert set(summary["final_ranks"]) == {"attn.in_proj_weight", "attn.out_proj.weight"}
    assert summary["total_rank"] == sum(summary["final_ranks"].values()) == 2 == summary["target_total_rank"]


def test_total_rank_follows_the_budget_schedule() -> None:
    model, x, y = attached("adalora", r=4, target_rank=1, **SCHEDULE)
    totals: list[int] = []
    train(model, x, y, steps=STEPS, lr=LR, observe=lambda step: totals.append(sum(_ranks(model))))
    first, last = round(SCHEDULE["tinit"] * STEPS), round(SCHEDULE["tfinal"] * STEPS)
    assert all(t == 8 for t in totals[:first]), "the initial rank until tinit"
    assert all(b <= a for a, b in zip(totals, totals[1:])), "the budget never grows"
    assert len(set(totals)) > 3, "a gradual schedule through intermediate budgets, not one cut"
    assert all(t == 2 for t in totals[last - 1 :]), "on target from tfinal to the end"


def test_merge_is_exact_with_the_mask_in_force() -> None:
    model, x, y = attached("adalora", r=4, target_rank=2, **SCHEDULE)
    train(model, x, y, steps=STEPS, lr=LR)
    assert min(_ranks(model)) < 4, "some triplets are masked"
    with torch.no_grad():
        before = model(x)
        for _, layer, behaviour, key in triplet_groups(model, "default"):
            values, mask = behaviour.singular_values(layer, "default", key)
            values[~mask] = 100.0  # a masked triplet must not contribute, whatever its λ
        torch.testing.assert_close(model(x), before, atol=MERGE_TOL, rtol=0)
        merge(model)
        torch.testing.assert_close(model(x), before, atol=MERGE_TOL, rtol=0)


def test_masks_are_saved_and_reloaded(tmp_path) -> None:
    model, x, y = attached("adalora", r=4, target_rank=2, **SCHEDULE)
    train(model, x, y, steps=STEPS, lr=LR)
    save_adapter(model, tmp_path)
    fresh = load_adapter(regression_problem()[0], tmp_path)
    assert _ranks(fresh) == _ranks(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)


def test_orthogonality_penalty_by_hand() -> None:
    model, _, _ = attached("adalora", r=4, orth_reg_weight=0.5)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            q, p = layer.stored_factors("default", "weight")  # Q is r×in, P is out×r
            q.copy_(torch.linalg.qr(torch.randn(q.shape[1], 4))[0].t())  # orthonormal rows
            p.copy_(torch.linalg.qr(torch.randn(p.shape[0], 4))[0])  # orthonormal columns
    assert regularization_loss(model).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.stored_factors("default", "weight")[1].mul_(2)  # PᵀP = 4I: ||3I||² = 9r per weight
    assert regularization_loss(model).item() == pytest.approx(0.5 * 9 * 4, rel=1e-5)
    zero, _, _ = attached("adalora", orth_reg_weight=0.0)
    assert regularization_loss(zero) is None


def _peft_twin(model: nn.Module, base: nn.Module) -> nn.Module:
    """PEFT's AdaLoRA on a copy of ``base`` with our P, Λ, Q copied in."""
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=["0", "2"], lora_dropout=0.0,
                           orth_reg_weight=0.0, total_step=10, tinit=0, tfinal=0)  # fmt: skip
    twin = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, layer in adapter_layers(model):
            theirs = twin.base_model.model.get_submodule(name)
            q, p = layer.stored_factors("default", "weight")
            theirs.lora_A["default"].copy_(q)
            theirs.lora_B["default"].copy_(p)
            theirs.lora_E["default"].copy_(layer.lora_E["default"]["weight"].view(-1, 1))
    return twin


def test_importance_scores_match_peft_rank_allocator() -> None:
    base, x, y = regression_problem()
    settings = {"target_rank": 2, "orth_reg_weight": 0.0}
    model = attach(copy.deepcopy(base), LoraConfig(r=4, alpha=8, targets=["0", "2"], variant="adalora",
                                                   variant_settings=settings))  # fmt: skip
    with torch.no_grad():  # non-zero Λ, so P and Q get gradients too
        for _, layer in adapter_layers(model):
            layer.lora_E["default"]["weight"].normal_(std=0.5)
    twin = _peft_twin(model, base)
    ours_opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    peft_opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.05)
    allocator = twin.base_model.rankallocator
    for _ in range(3):
        for net, opt in ((model, ours_opt), (twin, peft_opt)):
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        for _, layer, behaviour in ((n, la, la.behaviours["default"]) for n, la in adapter_layers(model)):
            behaviour.update_importance(layer, "default")
        allocator.update_ipt(twin.base_model.model)
        ours_opt.zero_grad()
        peft_opt.zero_grad()
    for name, layer in adapter_layers(model):
        behaviour = layer.behaviours["default"]
        for role, peft_name in (("Q", "lora_A"), ("P", "lora_B"), ("E", "lora_E")):
            key = f"{name}.{peft_name}.default"
            expected_avg = allocator.exp_avg_ipt[key].view_as(behaviour._sensitivity[("weight", role)])
            expected_unc = allocator.exp_avg_unc[key].view_as(expected_avg)
            torch.testing.assert_close(
                behaviour._sensitivity[("weight", role)], expected_avg, rtol=PEFT_TOL, atol=1e-12
            )
            torch.testing.assert_close(
                behaviour._uncertainty[("weight", role)], expected_unc, rtol=PEFT_TOL, atol=1e-12
            )
    kept_by_peft = allocator.mask_to_budget(twin.base_model.model, budget=3)
    allocate_budget(triplet_groups(model, "default"), "default", 3)
    for name, layer in adapter_layers(model):
        mask = layer.behaviours["default"].singular_values(layer, "default", "weight")[1]
        assert mask.tolist() == kept_by_peft[f"{name}.lora_E.default"]


def test_starts_as_identity_and_refuses_a_target_above_r() -> None:
    base, x, _ = regression_problem()
    with torch.no_grad():
        expected = base(x)
    model = attach(base, LoraConfig(r=4, targets=["0", "2"], variant="adalora", variant_settings={"target_rank": 2}))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    plain = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="target_rank"):
        attach(plain, LoraConfig(r=2, targets=["0"], variant="adalora", variant_settings={"target_rank": 3}))
    assert isinstance(plain[0], nn.Linear), "a refused attach leaves the model as it was"


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"target_rank": 0}, "target_rank"), ({"tinit": 1.0}, "tinit"), ({"tinit": 0.5, "tfinal": 0.4}, "tfinal"),
     ({"delta_t": 0}, "delta_t"), ({"beta1": 1.0}, "beta1"), ({"beta2": 0.0}, "beta2"),
     ({"orth_reg_weight": -1.0}, "orth_reg_weight")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(settings: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^variant_settings\.{field} "):
        LoraConfig(variant="adalora", variant_settings=settings)


def test_a_non_finite_step_leaves_the_scores_finite() -> None:
    model, x, y = attached("adalora", r=4, target_rank=2, **SCHEDULE)
    groups = triplet_groups(model, "default")
    for poison, hook_runs in ((float("inf"), True), (float("nan"), False), (1.0, True)):
        # a trainer skips the hook after a NaN loss; a float16 loss scaler runs it after skipping an Inf step
        loss = nn.functional.mse_loss(model(x), y) * poison
        (loss + regularization_loss(model)).backward()
        model.zero_grad(set_to_none=True)
        if hook_runs:
            after_optimizer_step(model, 0, STEPS)
    scores = torch.cat([b.triplet_scores(layer, "default", key) for _, layer, b, key in groups])
    assert torch.isfinite(scores).all() and (scores > 0).all()
