"""A few optimizer steps change only what should train; the base stays bit-identical."""

import copy

import pytest
import torch
from tiny_models import ALL_CASES, Case, run

from lora_studio.core import LoraConfig, adapter_layers, attach, count_parameters, merge_and_unload


def _train(model: torch.nn.Module, case: Case, steps: int = 3) -> None:
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        out = run(model, case.make_input())
        loss = (out.float() ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_only_adapters_and_saved_modules_change(case: Case) -> None:
    model = attach(case.build(), LoraConfig(r=4, targets=case.targets, modules_to_save=case.modules_to_save))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable), sorted(trainable)
    before = _snapshot(model)
    _train(model, case)
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_bias_modes_choose_which_biases_train() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    only = attach(copy.deepcopy(net), LoraConfig(r=2, targets=["0"], bias="lora_only"))
    assert {n for n, p in only.named_parameters() if p.requires_grad and "lora_" not in n} == {"0.base_layer.bias"}
    every = attach(copy.deepcopy(net), LoraConfig(r=2, targets=["0"], bias="all"))
    assert {n for n, p in every.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "0.base_layer.bias", "1.bias", "2.bias"
    }
    none = attach(copy.deepcopy(net), LoraConfig(r=2, targets=["0"]))
    assert {n for n, p in none.named_parameters() if p.requires_grad and "lora_" not in n} == set()


def test_trainable_counts_match_adapter_shapes() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    total_before = sum(p.numel() for p in net.parameters())
    model = attach(net, LoraConfig(r=4, targets=["0"], rank_pattern={"0": 5}, modules_to_save=["2"]))
    counts = count_parameters(model)
    expected_adapter = 5 * (10 + 20) + (20 * 3 + 3)  # rank-5 factors of layer 0, plus a full copy of the head
    assert counts.adapter == expected_adapter
    assert counts.trainable == expected_adapter
    assert counts.total == total_before + expected_adapter
    assert counts.base == total_before


def test_embedding_padding_row_never_changes() -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(12, 6, padding_idx=3)
    original_row = emb.weight[3].detach().clone()
    other_row = emb.weight[1].detach().clone()
    model = attach(torch.nn.Sequential(emb), LoraConfig(r=2, targets=["0"]))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.tensor([[3, 1, 2, 3, 5]])
    for _ in range(5):
        loss = (model(ids) - 1.0).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    plain = merge_and_unload(model)
    assert torch.equal(plain[0].weight[3], original_row)
    assert not torch.equal(plain[0].weight[1], other_row), "the other rows did train"


def test_adapters_train_in_float32_over_half_base() -> None:
    torch.manual_seed(0)
    model = attach(torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.bfloat16)), LoraConfig(r=2, targets=["0"]))
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "base_layer" in n)
    assert len(list(adapter_layers(model))) == 1
