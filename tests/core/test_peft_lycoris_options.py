"""PEFT's LoHa/LoKr options, PEFT 0.21 as the oracle (issue 16): LoKr's factorization with its fallback,
CP-decomposed conv kernels (``use_effective_conv2d``), ``rank_dropout``/``module_dropout``/``rank_dropout_scale``.

Eval-mode outputs agree both ways through the real folders (TOL).  The dropouts act only in
training: checked by property (module_dropout=1 gives the base output exactly, zero dropouts equal
no dropout, eval mode ignores them) and, since both draw from torch's global generator in the same
order, against PEFT's own training-mode output for the same seed.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, get_variant, load_adapter, merge, save_adapter, unmerge

peft = pytest.importorskip("peft")
from peft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lokr.layer import factorization as peft_factorization  # noqa: E402

from lora_studio.core.variants.lokr import factorization  # noqa: E402

TOL = 1e-5  # two float32 implementations of the same maths: only summation order differs
PEFT_CONFIGS = {"loha": LoHaConfig, "lokr": LoKrConfig}


def _perturb(model: nn.Module, seed: int = 5, std: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hada_" in name or "lokr_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _both_ways(base: nn.Module, x: torch.Tensor, variant: str, settings: dict, targets: list[str], tmp_path,
               r: int = 2) -> None:  # fmt: skip
    """Ours -> PEFT and PEFT -> ours give the same eval outputs, and the adapter changes the output."""
    ours = attach(copy.deepcopy(base), LoraConfig(r=r, alpha=2 * r, targets=targets, variant=variant,
                                                  variant_settings=settings))  # fmt: skip
    _perturb(ours)
    ours.eval()
    expected = _out(ours, x)
    assert (expected - _out(base, x)).abs().max() > 100 * TOL, "the adapter changes the output"
    save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(_out(theirs, x), expected, atol=TOL, rtol=0)

    peft_model = get_peft_model(copy.deepcopy(base), PEFT_CONFIGS[variant](r=r, alpha=2 * r, target_modules=targets,
                                                                           **settings))  # fmt: skip
    _perturb(peft_model, seed=11)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    loaded = load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
    assert (_out(loaded, x) - _out(base, x)).abs().max() > 100 * TOL
    torch.testing.assert_close(_out(loaded, x), _out(peft_model.eval(), x), atol=TOL, rtol=0)


# -- LoKr's factorization ---------------------------------------------------------------------------
def test_factorization_is_peft_s_for_every_size_and_factor() -> None:
    for dimension in range(1, 130):
        for factor in (-1, *range(1, 14), 16, 32, 64):
            assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


def test_a_peft_lokr_file_with_a_factor_that_does_not_divide_the_layer_loads(tmp_path) -> None:
    """The issue's case: decompose_factor=4 on a 10-wide layer (PEFT splits 10 as 2·5)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6)).eval()
    x = torch.randn(5, 12)
    _both_ways(base, x, "lokr", {"decompose_factor": 4}, ["0", "2"], tmp_path, r=4)
    _both_ways(base, x, "lokr", {"decompose_factor": 3, "decompose_both": True}, ["0", "2"], tmp_path / "b", r=1)


def test_a_peft_lokr_file_with_factor_zero_loads_as_factor_one(tmp_path) -> None:
    """PEFT splits every size as (1, size) for a factor of 0 (or below, other than -1), as for 1."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10)).eval()
    peft_model = get_peft_model(copy.deepcopy(base), LoKrConfig(r=2, target_modules=["0"], decompose_factor=0))
    _perturb(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    ours = load_adapter(copy.deepcopy(base), tmp_path).eval()
    assert ours[0].lokr_w1["default"].shape == (1, 1)
    x = torch.randn(4, 12)
    torch.testing.assert_close(_out(ours, x), _out(peft_model.eval(), x), atol=TOL, rtol=0)


# -- CP-decomposed kernels ------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self, conv: type[nn.Module], groups: int = 1) -> None:
        super().__init__()
        self.conv = conv(8, 16, 3, padding=1, groups=groups)
        self.point = conv(16, 8, 1)  # a 1x1 kernel: PEFT keeps it flat even with use_effective_conv2d
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(self.act(self.conv(x)))


CP_CASES = [(v, c, g) for v in ("loha", "lokr") for c in ("conv1d", "conv2d") for g in (1, 2)]
_CONVS = {"conv1d": (nn.Conv1d, (2, 8, 9)), "conv2d": (nn.Conv2d, (2, 8, 6, 6))}


def _cp_model(conv_name: str, groups: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    conv, shape = _CONVS[conv_name]
    return ConvNet(conv, groups).eval(), torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def _cp_settings(variant: str) -> dict:
    # LoKr CP-decomposes W2 only when it is low-rank: a small factor 2 leaves W2 (8, 4) or (8, 2): r=2 < 8/2.
    return {"use_effective_conv2d": True} | ({"decompose_factor": 2} if variant == "lokr" else {})


CP_RANK = 2  # PEFT 0.21's LoKr CP fails on a Conv1d at r=1 (torch.kron on an einsum view); ours runs there too


@pytest.mark.parametrize(("variant", "conv_name", "groups"), CP_CASES, ids=[f"{v}-{c}-g{g}" for v, c, g in CP_CASES])
def test_cp_kernels_agree_with_peft_both_ways(variant, conv_name, groups, tmp_path) -> None:
    base, x = _cp_model(conv_name, groups)
    _both_ways(base, x, variant, _cp_settings(variant), ["conv", "point"], tmp_path, r=CP_RANK)
    ours = attach(copy.deepcopy(base), LoraConfig(r=CP_RANK, targets=["conv", "point"], variant=variant,
                                                  variant_settings=_cp_settings(variant)))  # fmt: skip
    cores = {n.split(".")[1] for n, _ in ours.named_parameters() if "_t" in n.split(".")[1]}
    assert cores == ({"hada_t1", "hada_t2"} if variant == "loha" else {"lokr_t2"}), "the 3x3 conv is CP-decomposed"
    assert not any("_t" in n.split(".")[1] for n, _ in ours.point.named_parameters()), "1x1 kernels stay flat"


@pytest.mark.parametrize("conv_name", ["conv1d", "conv2d"])
@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_cp_kernels_merge_and_unmerge_exactly(variant, conv_name) -> None:
    base, x = _cp_model(conv_name, 2)
    model = attach(copy.deepcopy(base), LoraConfig(r=1, targets=["conv"], variant=variant,  # r=1: ours works
                                                   variant_settings=_cp_settings(variant)))  # fmt: skip
    _perturb(model)
    model.eval()
    unmerged = _out(model, x)
    merge(model)
    torch.testing.assert_close(_out(model, x), unmerged, atol=TOL, rtol=0)
    unmerge(model)
    torch.testing.assert_close(model.conv.base_layer.weight, base.conv.weight, atol=1e-6, rtol=0)


# -- the dropouts --------------------------------------------------------------------------------------
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8))


def _dropped(variant: str, **settings) -> nn.Module:
    model = attach(_mlp(), LoraConfig(r=4, alpha=8, targets=["0", "2"], variant=variant, variant_settings=settings))
    _perturb(model)
    return model


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_module_dropout_one_gives_the_base_output_exactly_in_training(variant) -> None:
    model, x = _dropped(variant, module_dropout=1.0).train(), torch.randn(6, 12)
    base = _mlp().train()
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x), base(x))
        assert not torch.equal(model.eval()(x), base.eval()(x)), "in eval mode the adapter is used"


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_zero_dropouts_in_training_equal_the_eval_output(variant) -> None:
    model, x = _dropped(variant, rank_dropout=0.0, module_dropout=0.0), torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x), atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_in_eval_mode_the_dropouts_change_nothing(variant) -> None:
    plain = _dropped(variant).eval()
    dropped = _dropped(variant, rank_dropout=0.7, module_dropout=0.7)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(x), plain(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("variant", "settings"),
    [
        ("loha", {"rank_dropout": 0.5, "module_dropout": 0.3}),
        ("lokr", {"rank_dropout": 0.5, "module_dropout": 0.3}),
        ("lokr", {"rank_dropout": 0.5, "rank_dropout_scale": True}),
    ],
    ids=["loha", "lokr", "lokr-scaled"],
)
def test_training_outputs_equal_peft_s_for_the_same_seed(variant, settings, tmp_path) -> None:
    """The dropouts draw from torch's global generator in PEFT's order, so one seed drops the same rows."""
    ours = _dropped(variant, **settings)
    save_adapter(ours, tmp_path)
    assert {k: v for k, v in json.loads((tmp_path / "adapter_config.json").read_text()).items() if k in settings} \
        == settings  # fmt: skip
    theirs = PeftModel.from_pretrained(_mlp(), str(tmp_path), is_trainable=True).train()
    ours.train()
    x = torch.randn(6, 12)
    differs = False
    with torch.no_grad():
        for seed in range(8):
            torch.manual_seed(seed)
            mine = ours(x)
            torch.manual_seed(seed)
            torch.testing.assert_close(theirs(x), mine, atol=TOL, rtol=0)
            differs |= not torch.allclose(mine, ours.eval()(x))
            ours.train()
    assert differs, "the dropouts changed some training outputs"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rank_dropout": 1.0}, r"variant_settings\.rank_dropout must be a number in \[0, 1\)"),
        ({"module_dropout": 1.5}, r"variant_settings\.module_dropout must be a number in \[0, 1\]"),
        ({"use_effective_conv2d": "yes"}, r"variant_settings\.use_effective_conv2d must be true or false"),
    ],
)
@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_bad_option_values_are_refused_by_name(variant, settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        LoraConfig(variant=variant, variant_settings=settings)


def test_the_window_form_lists_the_options() -> None:
    """The settings form is built from settings_fields(): the options appear with their types."""
    loha = {f.name: f.type_name for f in get_variant("loha").settings_fields()}
    lokr = {f.name: f.type_name for f in get_variant("lokr").settings_fields()}
    assert loha == {"rank_dropout": "float", "module_dropout": "float", "use_effective_conv2d": "bool"}
    assert lokr == loha | {"decompose_factor": "int", "decompose_both": "bool", "rank_dropout_scale": "bool"}


def test_rank_dropout_drops_whole_output_rows_of_the_update() -> None:
    """Each output unit gets either none of the update or all of it rescaled (LoHa: by 1/fraction kept)."""
    model = attach(_mlp(), LoraConfig(r=4, alpha=8, targets=["0"], variant="loha",
                                      variant_settings={"rank_dropout": 0.5}))  # fmt: skip
    _perturb(model)
    x = torch.randn(6, 12)
    with torch.no_grad():
        full = model[0].eval()(x) - model[0].base_layer(x)
        model.train()
        torch.manual_seed(4)
        dropped = model[0](x) - model[0].base_layer(x)
    ratios = (dropped / full)[0]
    kept = ratios.abs() > 1e-3
    assert 0 < int(kept.sum()) < 16
    torch.testing.assert_close(dropped[:, ~kept], torch.zeros_like(dropped[:, ~kept]), atol=1e-6, rtol=0)
    torch.testing.assert_close(dropped[:, kept], full[:, kept] * 16 / int(kept.sum()), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.eval()


def test_a_batch_with_every_rank_dropped_gets_no_update_rather_than_nan() -> None:
    """PEFT divides by the fraction kept even when it is zero (NaN); here such a batch just gets no update."""
    model = attach(nn.Sequential(nn.Linear(6, 1)), LoraConfig(r=2, targets=["0"], variant="loha",
                                                              variant_settings={"rank_dropout": 0.9}))  # fmt: skip
    _perturb(model)
    model.train()
    x = torch.randn(3, 6)
    seen_dropped = False
    with torch.no_grad():
        for seed in range(20):
            torch.manual_seed(seed)
            y = model(x)
            assert torch.isfinite(y).all()
            seen_dropped |= torch.equal(y, model[0].base_layer(x))
    assert seen_dropped, "with one output row and p=0.9 some batches drop it"
