"""DoRA: the paper's formula on a hand-checked 4x3 example, exact unmerge, and equality with PEFT's DoRA.

Hand example (section 3 of Liu et al. 2024), a Linear(3, 4) with r=1, alpha=1 (scaling 1)::

    W = [[3,0,0],[0,4,0],[0,0,2],[1,0,0]]      ||W||_c = [3, 4, 2, 1]   (the fresh magnitude)
    A = [[0,0,1]],  B = [4,3,0,0]ᵀ   ->  B·A = [[0,0,4],[0,0,3],[0,0,0],[0,0,0]]
    V = W + B·A = [[3,0,4],[0,4,3],[0,0,2],[1,0,0]]   ||V||_c = [5, 5, 2, 1]
    m = [10, 5, 1, 3]  ->  W' = m·V/||V||_c = [[6,0,8],[0,4,3],[0,0,1],[3,0,0]]
    x = [1,1,1]  ->  W'x = [14, 7, 1, 3]

With the norm detached (section 4.3) and L = sum(y): dL/dB = s·(m/n)·(A x) = [2, 1, 0.5, 3],
dL/dA = s·Σ_i (m_i/n_i)·B_i·xᵀ = 11·[1, 1, 1], dL/dm = V x / n = [1.4, 1.4, 1, 1].
Against PEFT (the oracle): the same factors give the same outputs, unmerged, merged and in training
with dropout; our saved folder loads in PEFT and PEFT's loads here with the same outputs.
Tolerances: HAND_TOL for the float32 hand example, PEFT_TOL against PEFT's outputs.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    merge_and_unload,
    save_adapter,
    unmerge,
)
from lora_studio.core.disk.peft_lora_format import PEFT_PREFIX, adapter_tensors

HAND_TOL = 1e-6
PEFT_TOL = 1e-5

W = torch.tensor([[3.0, 0, 0], [0, 4, 0], [0, 0, 2], [1, 0, 0]])
BIAS = torch.tensor([0.5, -1.0, 0.25, 2.0])


def _hand_layer() -> tuple[nn.Module, object]:
    model = nn.Sequential(nn.Linear(3, 4))
    with torch.no_grad():
        model[0].weight.copy_(W)
        model[0].bias.copy_(BIAS)
    attach(model, LoraConfig(r=1, alpha=1, targets=["0"], variant="dora"))
    layer = model[0]
    return model, layer


def _set_hand_factors(layer) -> None:
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[0.0, 0, 1]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[4.0], [3], [0], [0]]))
        layer.lora_magnitude_vector["default"].copy_(torch.tensor([10.0, 5, 1, 3]))


def test_fresh_magnitude_is_the_row_norm_and_output_is_the_base() -> None:
    model, layer = _hand_layer()
    torch.testing.assert_close(layer.lora_magnitude_vector["default"], torch.tensor([3.0, 4, 2, 1]))
    x = torch.tensor([[1.0, 2, 3]])
    torch.testing.assert_close(model(x), x @ W.t() + BIAS, atol=HAND_TOL, rtol=0)


def test_forward_and_merge_match_the_hand_computed_example() -> None:
    model, layer = _hand_layer()
    _set_hand_factors(layer)
    x = torch.ones(1, 3)
    expected = torch.tensor([[14.0, 7, 1, 3]]) + BIAS
    torch.testing.assert_close(model(x), expected, atol=HAND_TOL, rtol=0)
    merge(model)
    merged = torch.tensor([[6.0, 0, 8], [0, 4, 3], [0, 0, 1], [3, 0, 0]])
    torch.testing.assert_close(layer.base_layer.weight, merged, atol=HAND_TOL, rtol=0)
    torch.testing.assert_close(model(x), expected, atol=HAND_TOL, rtol=0)
    unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight, W, atol=HAND_TOL, rtol=0)


def test_norm_is_detached_so_gradients_match_the_hand_values() -> None:
    model, layer = _hand_layer()
    _set_hand_factors(layer)
    model(torch.ones(1, 3)).sum().backward()
    torch.testing.assert_close(layer.lora_B["default"].weight.grad, torch.tensor([[2.0], [1], [0.5], [3]]))
    torch.testing.assert_close(layer.lora_A["default"].weight.grad, torch.tensor([[11.0, 11, 11]]))
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].grad, torch.tensor([1.4, 1.4, 1, 1]))
    assert layer.base_layer.weight.grad is None, "the base stays frozen"


def test_repeated_merge_unmerge_restores_the_base() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    original = model[0].weight.detach().clone()
    attach(model, LoraConfig(r=2, alpha=4, targets=["0"], variant="dora"))
    _perturb(model)
    x = torch.randn(5, 8)
    unmerged = model(x)
    for _ in range(5):
        merge(model)
        torch.testing.assert_close(model(x), unmerged, atol=PEFT_TOL, rtol=0)
        unmerge(model)
    torch.testing.assert_close(model[0].base_layer.weight, original, atol=HAND_TOL, rtol=0)


def test_weight_space_layers_are_refused_with_a_reason() -> None:
    model = nn.Sequential(nn.GRUCell(4, 4))
    with pytest.raises(ValueError, match="magnitude is defined per output unit"):
        attach(model, LoraConfig(targets=["0"], variant="dora"))
    assert isinstance(model[0], nn.GRUCell), "a refused attach leaves the model as it was"


# -- equality with PEFT's DoRA ---------------------------------------------------------------------
class _Mixed(nn.Module):
    """Every layer type DoRA supports: Embedding, Linear, GPT-2 Conv1D and Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.lin = nn.Linear(6, 5)
        self.c1d = Conv1D(4, 5)
        nn.init.normal_(self.c1d.weight, std=0.3)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        tokens = self.c1d(torch.tanh(self.lin(self.emb(ids))))
        return torch.cat([tokens.flatten(1), self.conv(image).flatten(1)], dim=1)


TARGETS = ["emb", "lin", "c1d", "conv"]


def _perturb(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in layer.adapter_parameters("default"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def _base() -> nn.Module:
    torch.manual_seed(0)
    return _Mixed()


def _ours_and_peft(dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    import peft

    base = _base()
    ours = attach(copy.deepcopy(base), LoraConfig(r=2, alpha=3, dropout=dropout, targets=TARGETS, variant="dora"))
    _perturb(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's fan_in_fan_out notice for Conv1D
        theirs = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(r=2, lora_alpha=3, lora_dropout=dropout, target_modules=TARGETS, use_dora=True),
        )
    state = {PEFT_PREFIX + k: v.detach().clone() for k, v in adapter_tensors(ours, "default").items()}
    assert any("lora_magnitude_vector" in k for k in state), "the magnitude is saved under PEFT's name"
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not [k for k in result.unexpected_keys if "lora" in k], "every tensor of ours has a PEFT place"
    return ours, theirs


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.tensor([[0, 3, 7, 10], [2, 0, 1, 5]]), torch.randn(2, 2, 4, 4, generator=g)


def test_outputs_equal_peft_dora_unmerged_and_merged() -> None:
    ours, theirs = _ours_and_peft()
    ids, image = _inputs()
    with torch.no_grad():
        expected = theirs(ids, image)
        torch.testing.assert_close(ours(ids, image), expected, atol=PEFT_TOL, rtol=0)
        with theirs.disable_adapter():
            assert (expected - theirs(ids, image)).abs().max() > 100 * PEFT_TOL, "the adapters change the output"
        merged_ours = merge_and_unload(ours)
        merged_theirs = theirs.merge_and_unload()
        torch.testing.assert_close(merged_ours(ids, image), merged_theirs(ids, image), atol=PEFT_TOL, rtol=0)
        for name in TARGETS:
            torch.testing.assert_close(
                merged_ours.get_submodule(name).weight, merged_theirs.get_submodule(name).weight, atol=PEFT_TOL, rtol=0
            )


def test_training_forward_with_dropout_equals_peft() -> None:
    # PEFT recomputes W·dropout(x) with the same dropped input; the same seed gives the same masks.
    ours, theirs = _ours_and_peft(dropout=0.3)
    ours.train()
    theirs.train()
    ids, image = _inputs()
    torch.manual_seed(5)
    out_ours = ours(ids, image)
    torch.manual_seed(5)
    out_theirs = theirs(ids, image)
    torch.testing.assert_close(out_ours, out_theirs, atol=PEFT_TOL, rtol=0)


def test_saved_adapter_loads_in_peft_and_peft_adapter_loads_here(tmp_path) -> None:
    import peft

    ours, theirs = _ours_and_peft()
    ids, image = _inputs()
    with torch.no_grad():
        expected = ours(ids, image)
    base = _base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = save_adapter(ours, tmp_path / "ours")
        in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder)
        theirs.save_pretrained(tmp_path / "theirs")
        here = load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(in_peft(ids, image), expected, atol=PEFT_TOL, rtol=0)
        torch.testing.assert_close(here(ids, image), expected, atol=PEFT_TOL, rtol=0)
