"""Grouped and depthwise convolutions with LoRA, DoRA, LoHa and LoKr, PEFT 0.21 as the oracle (issue 16).

Both ways through the real folders: ours saved by ``save_adapter`` loads in PEFT, and PEFT's
``save_pretrained`` folder loads through ``load_adapter``, with equal outputs (TOL) for non-zero
adapters.  LoHa/LoKr build a ΔW of the grouped weight's shape: merged equals unmerged, and
unmerging gives the base weight back.  LoRA/DoRA's update reads every input channel, which no
grouped weight holds: merging is refused by name (as PEFT refuses it), the model untouched.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_studio.core import (
    LoraConfig,
    MergeNotSupportedError,
    attach,
    count_parameters,
    export_merged,
    load_adapter,
    merge,
    save_adapter,
    unmerge,
)

peft = pytest.importorskip("peft")
from peft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model  # noqa: E402
from peft import LoraConfig as PeftLoraConfig  # noqa: E402

TOL = 1e-5  # two float32 implementations of the same maths: only summation order differs
MERGE_TOL = 1e-5  # W + ΔW applied once vs base + ΔW applied beside it: float32 rounding of the sums
VARIANTS = ("lora", "dora", "loha", "lokr")
CONVS = {"conv1d": (nn.Conv1d, (2, 4, 11)), "conv2d": (nn.Conv2d, (2, 4, 7, 7))}
GROUPS = {"groups2": 2, "depthwise": 4}  # 4 input channels: groups=4 is depthwise


class Net(nn.Module):
    """A grouped conv between two plain layers (the adapted layer is ``conv``)."""

    def __init__(self, conv: type[nn.Module], groups: int) -> None:
        super().__init__()
        self.conv = conv(4, 8, 3, padding=1, groups=groups)
        self.act = nn.Tanh()
        self.out = conv(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.conv(x)))


def _base(conv_name: str, groups: str) -> nn.Module:
    torch.manual_seed(0)
    return Net(CONVS[conv_name][0], GROUPS[groups]).eval()


def _x(conv_name: str) -> torch.Tensor:
    return torch.randn(*CONVS[conv_name][1], generator=torch.Generator().manual_seed(2))


def _perturb(model: nn.Module, seed: int = 5, std: float = 0.3) -> None:
    """Non-zero adapters (both fresh starts leave the update at zero); the magnitude is nudged, not replaced."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "magnitude" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif any(part in name for part in ("lora_", "hada_", "lokr_")):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _ours(variant: str, conv_name: str, groups: str) -> nn.Module:
    model = attach(_base(conv_name, groups), LoraConfig(r=4, alpha=8, targets=["conv"], variant=variant))
    _perturb(model)
    return model.eval()


def _peft_config(variant: str):
    if variant in ("lora", "dora"):
        return PeftLoraConfig(r=4, lora_alpha=8, target_modules=["conv"], use_dora=variant == "dora")
    return (LoHaConfig if variant == "loha" else LoKrConfig)(r=4, alpha=8, target_modules=["conv"])


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


CASES = [(v, c, g) for v in VARIANTS for c in CONVS for g in GROUPS]
IDS = [f"{v}-{c}-{g}" for v, c, g in CASES]


@pytest.mark.parametrize(("variant", "conv_name", "groups"), CASES, ids=IDS)
def test_ours_loads_in_peft_with_the_same_outputs(variant, conv_name, groups, tmp_path) -> None:
    model, x = _ours(variant, conv_name, groups), _x(conv_name)
    expected = _out(model, x)
    assert (expected - _out(_base(conv_name, groups), x)).abs().max() > 100 * TOL, "the adapter changes the output"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no compatibility note: PEFT rebuilds these exactly
        save_adapter(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that grouped LoRA cannot merge
        theirs = PeftModel.from_pretrained(_base(conv_name, groups), str(tmp_path)).eval()
    torch.testing.assert_close(_out(theirs, x), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(("variant", "conv_name", "groups"), CASES, ids=IDS)
def test_peft_folder_loads_here_with_the_same_outputs(variant, conv_name, groups, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(_base(conv_name, groups), _peft_config(variant))
    _perturb(theirs, seed=9)
    theirs.save_pretrained(str(tmp_path))
    x = _x(conv_name)
    ours = load_adapter(_base(conv_name, groups), tmp_path).eval()
    assert (_out(ours, x) - _out(_base(conv_name, groups), x)).abs().max() > 100 * TOL
    torch.testing.assert_close(_out(ours, x), _out(theirs.eval(), x), atol=TOL, rtol=0)


@pytest.mark.parametrize(("variant", "conv_name", "groups"), [c for c in CASES if c[0] in ("loha", "lokr")],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] in ("loha", "lokr")])  # fmt: skip
def test_loha_and_lokr_merge_and_unmerge_exactly(variant, conv_name, groups) -> None:
    model, x = _ours(variant, conv_name, groups), _x(conv_name)
    base_weight = model.conv.base_layer.weight.detach().clone()
    unmerged = _out(model, x)
    merge(model)
    assert model.conv.merged_adapters == ["default"]
    torch.testing.assert_close(_out(model, x), unmerged, atol=MERGE_TOL, rtol=0)
    unmerge(model)
    torch.testing.assert_close(model.conv.base_layer.weight, base_weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["lora", "dora"])
@pytest.mark.parametrize("groups", list(GROUPS))
def test_lora_and_dora_merge_is_refused_by_name_and_nothing_changes(variant, groups, tmp_path) -> None:
    model, x = _ours(variant, "conv2d", groups), _x("conv2d")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _out(model, x)
    with pytest.raises(MergeNotSupportedError, match=r"groups=\d.*cannot be merged|cannot be merged.*groups=\d"):
        merge(model)
    with pytest.raises(MergeNotSupportedError, match="export the adapter"):
        export_merged(model, tmp_path / "merged")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.conv.merged_adapters == []
    torch.testing.assert_close(_out(model, x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["lora", "dora"])
@pytest.mark.parametrize("groups", list(GROUPS))
def test_lora_and_dora_update_is_the_ungrouped_conv_weight_of_what_forward_adds(variant, groups) -> None:
    """delta_weight (the update norms read it) is the (out, in, k, k) weight whose ungrouped conv adds
    exactly what the adapter adds to the layer's output."""
    model, x = _ours(variant, "conv2d", groups), _x("conv2d")
    layer = model.conv
    delta = layer.delta_weight("default")
    assert tuple(delta.shape) == (8, 4, 3, 3)
    with torch.no_grad():
        added = layer(x) - layer.base_layer(x)
        by_weight = F.conv2d(x, delta, padding=1)
    torch.testing.assert_close(by_weight, added, atol=TOL, rtol=0)


def test_the_lora_rank_must_split_over_the_groups_and_the_model_is_untouched() -> None:
    base = _base("conv2d", "groups2")
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ValueError, match=r"rank 3 on a Conv2d with groups=2.*divisible by 2"):
        attach(base, LoraConfig(r=3, targets=["conv"]))
    with pytest.raises(ValueError, match=r"layer 'conv': rank 3 on a Conv2d with groups=2"):
        attach(base, LoraConfig(r=3, targets=["conv"], variant="dora"))
    assert isinstance(base.conv, nn.Conv2d)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    attach(base, LoraConfig(r=3, targets=["conv"], variant="loha"))  # LoHa/LoKr: any rank, as in PEFT


def test_a_variant_without_a_grouped_form_is_refused_by_name() -> None:
    base = _base("conv2d", "depthwise")
    with pytest.raises(ValueError, match=r"Conv2d with groups=4 .*lora, lora_plus, dora, loha and lokr"):
        attach(base, LoraConfig(r=4, targets=["conv"], variant="gated"))
    assert isinstance(base.conv, nn.Conv2d)


@pytest.mark.parametrize("groups", list(GROUPS))
def test_added_parameters_counts_what_attach_creates_and_peft_too(groups) -> None:
    from lora_studio.core.layers import ConvLora

    base = _base("conv2d", groups)
    formula = ConvLora.added_parameters(base.conv, 4)
    before = count_parameters(base).total
    ours = attach(copy.deepcopy(base), LoraConfig(r=4, targets=["conv"]))
    assert count_parameters(ours).adapter == count_parameters(ours).total - before == formula
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(copy.deepcopy(base), _peft_config("lora"))
    assert sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n) == formula


def test_grouped_conv_runs_op_by_op_with_the_same_output_and_gradients() -> None:
    """The fused function has no groups: a grouped conv keeps the op-by-op path, in training too."""
    model, x = _ours("lora", "conv2d", "groups2"), _x("conv2d")
    model.train()
    reference = copy.deepcopy(model)
    reference.conv.limit_fast_paths("none")
    assert model.conv.fused_forward("default", x, model.conv.base_layer(x)) is None
    for m in (model, reference):
        m(x).square().sum().backward()
    a, ref_a = model.conv.lora_A["default"].weight, reference.conv.lora_A["default"].weight
    torch.testing.assert_close(a.grad, ref_a.grad, atol=0, rtol=0)


# -- PEFT's own grouped cases (its repository's tests/test_custom_models.py: Conv1d/Conv2d Groups, Groups2) --
class MatrixConv1dGroups(nn.Module):
    """PEFT's ModelConv1DGroups: a (n, 10) input repeated over 8 channels into Conv1d(8, 8, 3, groups=2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(8, 8, 3, groups=2)
        self.lin0 = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.reshape(-1, 1, 10)] * 8, dim=1)
        return torch.log_softmax(self.lin0(torch.relu(self.conv1d(x)).flatten(1)), dim=-1)


class MatrixConv2dGroups(nn.Module):
    """PEFT's ModelConv2DGroups: Linear(90, 288) reshaped into Conv2d(16, 16, 3, groups=8)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(90, 288)
        self.conv2d = nn.Conv2d(16, 16, 3, groups=8)
        self.lin1 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin0(x.flatten()).reshape(2, 16, 3, 3)
        return torch.log_softmax(self.lin1(torch.relu(self.conv2d(x)).flatten(1)), dim=-1)


class MatrixConv2dGroups2(nn.Module):
    """PEFT's ModelConv2DGroups2 (Conv2d(16, 32, 3, padding=1, groups=2)), fed its input rather than an arange."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(16, 32, 3, padding=1, groups=2)
        self.lin0 = nn.Linear(12800, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lin0(torch.relu(self.conv2d(x)).flatten(1)), dim=-1)


MATRIX_MODELS = {
    "Conv1dGroups": (MatrixConv1dGroups, (9, 10), "conv1d"),
    "Conv2dGroups": (MatrixConv2dGroups, (9, 10), "conv2d"),
    "Conv2dGroups2": (MatrixConv2dGroups2, (2, 16, 20, 20), "conv2d"),
}
# PEFT's case list for these models: (model, config class, settings); r and alpha are PEFT's defaults.
MATRIX_CASES = [
    ("Conv2dGroups", PeftLoraConfig, {}), ("Conv2dGroups2", PeftLoraConfig, {}),
    ("Conv2dGroups", PeftLoraConfig, {"use_dora": True}), ("Conv2dGroups2", PeftLoraConfig, {"use_dora": True}),
    ("Conv1dGroups", LoHaConfig, {"r": 4}), ("Conv2dGroups", LoHaConfig, {}), ("Conv2dGroups2", LoHaConfig, {}),
    ("Conv1dGroups", LoKrConfig, {"r": 4}), ("Conv2dGroups", LoKrConfig, {}), ("Conv2dGroups2", LoKrConfig, {}),
]  # fmt: skip
MATRIX_IDS = [f"{m}-{c.__name__}{'-dora' if s.get('use_dora') else ''}" for m, c, s in MATRIX_CASES]


def _matrix_base(model_id: str) -> nn.Module:
    torch.manual_seed(0)
    return MATRIX_MODELS[model_id][0]().eval()


@pytest.mark.parametrize(("model_id", "config_class", "settings"), MATRIX_CASES, ids=MATRIX_IDS)
def test_peft_s_own_grouped_cases_round_trip(model_id, config_class, settings, tmp_path) -> None:
    """PEFT -> ours -> PEFT: the same outputs each way; LoHa/LoKr merged equal unmerged."""
    _, shape, layer = MATRIX_MODELS[model_id]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's note that grouped LoRA cannot merge
        theirs = get_peft_model(_matrix_base(model_id), config_class(target_modules=[layer], **settings))
    _perturb(theirs, seed=3, std=0.3)
    theirs.save_pretrained(str(tmp_path / "peft"))
    expected = _out(theirs.eval(), x)
    ours = load_adapter(_matrix_base(model_id), tmp_path / "peft").eval()
    assert (_out(ours, x) - _out(_matrix_base(model_id), x)).abs().max() > 100 * TOL
    torch.testing.assert_close(_out(ours, x), expected, atol=TOL, rtol=0)
    save_adapter(ours, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = PeftModel.from_pretrained(_matrix_base(model_id), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(_out(again, x), expected, atol=TOL, rtol=0)
    if config_class is PeftLoraConfig:
        with pytest.raises(MergeNotSupportedError, match="groups="):
            merge(ours)
    else:
        merge(ours)
        torch.testing.assert_close(_out(ours, x), expected, atol=MERGE_TOL, rtol=0)
