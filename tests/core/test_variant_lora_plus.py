"""LoRA+: B in a group with lr·lr_ratio, A at lr, embedding adapters at embedding_lr, the rest at lr.

Checked three ways: the groups themselves; one AdamW step, whose first update has size
lr per element (Adam normalises the gradient), so B moves by lr·lr_ratio; and PEFT's
``create_loraplus_optimizer`` as an oracle for the learning rate of every LoRA factor.
STEP_TOL is the relative tolerance of Adam's first step (its epsilon).
"""

import copy

import pytest
import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, optimizer_param_groups

LR = 1e-3
RATIO = 8.0
STEP_TOL = 1e-3


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(self.emb(ids)))).mean(1)


def _model(**changes) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=2, alpha=4, targets=["emb", "lin"], variant="lora_plus",
                        variant_settings={"lr_ratio": RATIO}, **changes)  # fmt: skip
    return attach(_Net(), config)


def _lr_by_param(groups: list[dict]) -> dict[int, float]:
    lrs: dict[int, float] = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in lrs, "a parameter is in two groups"
            lrs[id(p)] = group["lr"]
    return lrs


def test_groups_put_b_at_the_scaled_rate_and_a_at_the_base_rate() -> None:
    model = _model(bias="all", modules_to_save=["head"])
    groups = optimizer_param_groups(model, lr=LR, weight_decay=0.01)
    lrs = _lr_by_param(groups)
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    assert set(lrs) == {id(p) for p in trainable.values()}, "every trainable parameter exactly once"
    assert model.lin.lora_B["default"].weight.requires_grad
    assert lrs[id(model.lin.lora_B["default"].weight)] == pytest.approx(LR * RATIO)
    assert lrs[id(model.lin.lora_A["default"].weight)] == pytest.approx(LR)
    for factor in (model.emb.lora_embedding_A["default"], model.emb.lora_embedding_B["default"]):
        assert lrs[id(factor)] == pytest.approx(1e-6), "embedding adapters: the reference code's fixed rate"
    for name, p in trainable.items():
        if "lora_" not in name:  # biases and the fully trained head are not LoRA factors
            assert lrs[id(p)] == pytest.approx(LR), name
    assert all(g["weight_decay"] == 0.01 for g in groups)
    b_group = next(g for g in groups if any(p is model.lin.lora_B["default"].weight for p in g["params"]))
    assert b_group["name"] == "loraplus_B" and len(b_group["params"]) == 1


def test_first_adam_step_moves_b_by_lr_times_ratio() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr=LR), weight_decay=0.0)
    b = model.lin.lora_B["default"].weight
    a = model.lin.lora_A["default"].weight
    before_a = a.detach().clone()
    model(torch.tensor([[1, 2, 3], [4, 5, 6]])).pow(2).sum().backward()
    optimizer.step()
    step_b = b.detach().abs()  # B started at zero
    moved = step_b[step_b > 0]
    assert moved.numel() > 0
    torch.testing.assert_close(moved, torch.full_like(moved, LR * RATIO), rtol=STEP_TOL, atol=0)
    # B was zero in forward, so A had no gradient yet: it must not have moved at all.
    torch.testing.assert_close(a.detach(), before_a, rtol=0, atol=0)


def test_lora_factor_rates_equal_peft_create_loraplus_optimizer() -> None:
    import peft
    from peft.optimizers import create_loraplus_optimizer

    torch.manual_seed(0)
    base = _Net()
    ours = attach(copy.deepcopy(base), LoraConfig(r=2, alpha=4, targets=["emb", "lin"], variant="lora_plus",
                                                  variant_settings={"lr_ratio": RATIO}))  # fmt: skip
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["emb", "lin"]))
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO)
    peft_lr = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            peft_lr[id(p)] = group["lr"]
    peft_names = {n.removeprefix("base_model.model."): peft_lr[id(p)] for n, p in theirs.named_parameters()
                  if p.requires_grad}  # fmt: skip
    our_lr = _lr_by_param(optimizer_param_groups(ours, lr=LR))
    factors = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert set(factors) == set(peft_names)
    for name, p in factors.items():
        assert our_lr[id(p)] == pytest.approx(peft_names[name]), name


@pytest.mark.parametrize("bad", [0, -1.0, "16", True])
def test_lr_ratio_must_be_a_positive_number(bad) -> None:
    with pytest.raises(ValueError, match=r"^variant_settings\.lr_ratio must be a number > 0"):
        LoraConfig(variant="lora_plus", variant_settings={"lr_ratio": bad})


def test_embedding_lr_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"^variant_settings\.embedding_lr"):
        LoraConfig(variant="lora_plus", variant_settings={"embedding_lr": -1e-6})
