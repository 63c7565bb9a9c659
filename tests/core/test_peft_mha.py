"""MultiheadAttention adapters in PEFT's layout, both ways, with PEFT as the oracle.

PEFT's ``lora.MultiheadAttention`` keeps the in-projection's factors on the attention module and
the out-projection's on a LoRA Linear nested under ``base_layer.out_proj``; our files use exactly
those keys.  Both sides mean ``W + s·B·A`` per weight, but PEFT up to 0.21.2 adds the out-projection's
update twice in its forward (it merges around the call, and its merge counts out_proj twice: PEFT PR
#3774).  ``peft_out_proj_count`` measures how often the installed PEFT counts it, against a base
attention whose weights are set by hand, and the comparisons divide PEFT's out_proj ``lora_B`` by that
count: what PEFT's forward computes once that fix is in.  The in-projection is compared against PEFT
untouched (out_proj factors zero), so nothing but the documented double count is corrected for.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings

import pytest
import torch
from io_models import IOCase, call, fresh, gen, perturb
from io_models import pretrained as build_pretrained
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    check_adapter_fit,
    load_adapter,
    merge,
    read_adapter_facts,
    save_adapter,
    unmerge,
)

peft = pytest.importorskip("peft")
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

TOL = 1e-5  # two implementations of the same float32 maths: only summation order differs
OUT_B = "base_layer.out_proj.lora_B"  # PEFT's nested out-projection factor (a module path fragment)


class BareAttention(nn.Module):
    """Nothing but one ``nn.MultiheadAttention`` (self-attention, its output is the model's)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def tiny_vit() -> nn.Module:
    """torchvision's ViT in miniature, random weights (nothing downloaded)."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero: outputs would be 0
    return model


class PeftMatrixMha(nn.Module):
    """The MultiheadAttention model of PEFT's custom-model test matrix (``ModelMha`` in PEFT's own
    tests/test_custom_models.py): sequence-first, unbatched input, attention weights returned, a Linear
    and a LogSoftmax after it."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(10, 2)
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x, _ = self.mha(x, x, x)
        return self.sm(self.lin0(x))


BARE = IOCase("bare_mha", BareAttention, lambda: torch.randn(2, 5, 16, generator=gen()), ["mha"])
VIT = IOCase("vit", tiny_vit, lambda: torch.randn(2, 3, 32, 32, generator=gen()), ["self_attention", "mlp.0"])
# PEFT's own cases "MHA 1 LoRA" (target_modules=["mha"]) and "MHA 2 LoRA" (["mha", "lin0"]), its 9 x 10 input.
PEFT_MHA_1 = IOCase("peft_mha_1", PeftMatrixMha, lambda: torch.randn(9, 10, generator=gen()), ["mha"])
PEFT_MHA_2 = IOCase("peft_mha_2", PeftMatrixMha, lambda: torch.randn(9, 10, generator=gen()), ["mha", "lin0"])
CASES = [BARE, VIT, PEFT_MHA_1, PEFT_MHA_2]


@functools.cache
def peft_out_proj_count() -> int:
    """How many times the installed PEFT's MultiheadAttention forward adds the out_proj update (1 or 2)."""
    torch.manual_seed(0)
    base = BareAttention().eval()
    model = get_peft_model(copy.deepcopy(base), PeftLoraConfig(r=2, lora_alpha=4, target_modules=["mha"])).eval()
    layer = model.base_model.model.mha
    out = layer.base_layer.out_proj
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out.lora_A["default"].weight.copy_(torch.randn(out.lora_A["default"].weight.shape, generator=g))
        out.lora_B["default"].weight.copy_(torch.randn(out.lora_B["default"].weight.shape, generator=g))
        delta = out.scaling["default"] * out.lora_B["default"].weight @ out.lora_A["default"].weight
    x = BARE.inputs()
    got = call(model, x)
    for count in (1, 2):
        reference = copy.deepcopy(base)
        with torch.no_grad():
            reference.mha.out_proj.weight.add_(count * delta)
        if torch.allclose(call(reference, x), got, atol=TOL, rtol=0):
            return count
    raise AssertionError("PEFT's MultiheadAttention computes neither W + s·B·A nor W + 2·s·B·A for out_proj")


def as_fixed_peft(peft_model: nn.Module) -> nn.Module:
    """``peft_model`` with each nested out_proj ``lora_B`` divided by PEFT's count: PEFT's forward with PR #3774."""
    count = peft_out_proj_count()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if f".{OUT_B}." in name:
                p.div_(count)
    return peft_model


def file_keys(folder) -> set[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return set(f.keys())


def peft_loads(folder, base: nn.Module) -> nn.Module:
    """PEFT's model for ``folder``; fails on any missing or unexpected key."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys.*")
        model = PeftModel.from_pretrained(base, str(folder))
    if model.peft_config["default"].bias == "none":  # PEFT allows one adapter with trained biases only
        check = model.load_adapter(str(folder), adapter_name="check")  # the load result, with both key lists
        assert check.missing_keys == [] and check.unexpected_keys == []
        model.set_adapter("default")
    saved = get_peft_model_state_dict(model, adapter_name="default")
    assert {"base_model.model." + k.removeprefix("base_model.model.") for k in saved} == file_keys(folder)
    return model.eval()


def ours_saved(case: IOCase, folder, **config) -> nn.Module:
    model = build_pretrained(case)
    attach(model, LoraConfig(**({"r": 4, "alpha": 8, "targets": case.targets} | config)))
    perturb(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the out_proj note, checked on its own below
        save_adapter(model, folder)
    return model


def peft_saved(case: IOCase, folder, *, zero_out_proj: bool = False, **config) -> nn.Module:
    """A PEFT-made adapter with random factors (B too, so it changes the outputs), saved to ``folder``."""
    model = get_peft_model(build_pretrained(case), PeftLoraConfig(**({"r": 4, "lora_alpha": 8,
                           "target_modules": case.targets} | config))).eval()  # fmt: skip
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or (config.get("bias", "none") != "none" and name.endswith("bias") and p.requires_grad):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
            if zero_out_proj and f".{OUT_B}." in name:
                p.zero_()
    model.save_pretrained(str(folder))
    return model


# -- the layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_our_file_has_exactly_the_keys_peft_saves(case, tmp_path):
    ours_saved(case, tmp_path)
    peft_model = get_peft_model(build_pretrained(case), PeftLoraConfig(r=4, lora_alpha=8, target_modules=case.targets))
    peft_keys = {
        "base_model.model." + k.removeprefix("base_model.model.") for k in get_peft_model_state_dict(peft_model)
    }
    assert file_keys(tmp_path) == peft_keys
    assert any(f".{OUT_B}." in k for k in peft_keys)
    peft_loads(tmp_path, build_pretrained(case))  # and PEFT reads every one of them back


def test_the_out_proj_note_is_given_on_save_and_recorded(tmp_path):
    model = build_pretrained(BARE)
    attach(model, LoraConfig(r=2, targets=["mha"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # B starts at zero: the update is zero, PEFT's double count changes nothing
        save_adapter(model, tmp_path / "untrained")
    perturb(model)
    with pytest.warns(UserWarning, match=r"PR #3774"):
        save_adapter(model, tmp_path / "trained")
    studio = json.loads((tmp_path / "trained" / "lora_studio_adapter.json").read_text())
    assert not studio["peft_compatible"] and "out_proj" in studio["peft_notes"][0]
    assert "lacks" not in " ".join(studio["peft_notes"])


# -- ours -> PEFT ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_peft_computes_our_outputs_from_our_file(case, tmp_path):
    ours = ours_saved(case, tmp_path)
    x = case.inputs()
    peft_model = as_fixed_peft(peft_loads(tmp_path, build_pretrained(case)))
    torch.testing.assert_close(call(peft_model, x), call(ours, x), atol=TOL, rtol=0)
    assert not torch.allclose(call(ours, x), call(build_pretrained(case), x), atol=1e-3)  # the adapter is not zero


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_peft_as_installed_computes_our_in_projection_update(case, tmp_path):
    """No correction at all: with the out_proj factors zero, PEFT's forward is ours to 1e-5."""
    model = build_pretrained(case)
    attach(model, LoraConfig(r=4, alpha=8, targets=case.targets))
    perturb(model)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            if isinstance(layer.base_layer, nn.MultiheadAttention):
                layer.lora_B["default"]["out_proj_weight"].zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zero out_proj update: nothing to warn about
        save_adapter(model, tmp_path)
    x = case.inputs()
    torch.testing.assert_close(call(peft_loads(tmp_path, build_pretrained(case)), x), call(model, x), atol=TOL, rtol=0)


def test_peft_reads_our_trained_out_proj_bias(tmp_path):
    for bias in ("all", "lora_only"):
        ours = ours_saved(BARE, tmp_path / bias, bias=bias)
        with torch.no_grad():
            ours.mha.base_layer.out_proj.bias.add_(0.3)  # as training would move it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            save_adapter(ours, tmp_path / bias)
        assert "base_model.model.mha.base_layer.out_proj.base_layer.bias" in file_keys(tmp_path / bias)
        x = BARE.inputs()
        peft_model = as_fixed_peft(peft_loads(tmp_path / bias, build_pretrained(BARE)))
        torch.testing.assert_close(call(peft_model, x), call(ours, x), atol=TOL, rtol=0)


# -- PEFT -> ours ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_we_compute_what_peft_computes_from_its_file(case, tmp_path):
    peft_model = peft_saved(case, tmp_path)
    x = case.inputs()
    if peft_out_proj_count() == 2:
        with pytest.warns(UserWarning, match=r"records PEFT .*PR #3774"):
            ours = load_adapter(fresh(case), tmp_path)
    else:
        ours = load_adapter(fresh(case), tmp_path)
    torch.testing.assert_close(call(ours, x), call(as_fixed_peft(peft_model), x), atol=TOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_we_compute_peft_as_installed_when_its_out_proj_update_is_zero(case, tmp_path):
    peft_model = peft_saved(case, tmp_path, zero_out_proj=True)
    x = case.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing differs, so nothing is said
        ours = load_adapter(fresh(case), tmp_path)
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)
    assert not torch.allclose(call(ours, x), call(build_pretrained(case), x), atol=1e-3)


def test_we_read_peft_out_proj_bias_and_rank_pattern(tmp_path):
    peft_model = peft_saved(VIT, tmp_path, bias="all", rank_pattern={"encoder_layer_1.self_attention": 2},
                            alpha_pattern={"encoder_layer_0.self_attention": 3})  # fmt: skip
    x = VIT.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_adapter(fresh(VIT), tmp_path)
    torch.testing.assert_close(call(ours, x), call(as_fixed_peft(peft_model), x), atol=TOL, rtol=0)


def test_a_peft_mha_folder_is_listed_and_fits(tmp_path):
    peft_saved(BARE, tmp_path)
    facts = read_adapter_facts(tmp_path)
    assert facts.targets == ("mha",) and facts.ranks == {"mha": 4}
    assert check_adapter_fit(fresh(BARE), tmp_path).fits


# -- our older key scheme, and merging ----------------------------------------------------------------
def test_our_older_mha_key_scheme_still_loads(tmp_path):
    ours = ours_saved(BARE, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = {"base_model.model.mha.lora_A.weight": "base_model.model.mha.lora_A.in_proj_weight",
           "base_model.model.mha.lora_B.weight": "base_model.model.mha.lora_B.in_proj_weight",
           f"base_model.model.mha.{OUT_B.removesuffix('lora_B')}lora_A.weight":
               "base_model.model.mha.lora_A.out_proj_weight",
           f"base_model.model.mha.{OUT_B}.weight": "base_model.model.mha.lora_B.out_proj_weight"}  # fmt: skip
    save_file({old[k]: t for k, t in tensors.items()}, str(weights), metadata={"format": "pt"})
    x = BARE.inputs()
    torch.testing.assert_close(call(load_adapter(fresh(BARE), tmp_path), x), call(ours, x), atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_our_merged_model_equals_our_unmerged(case):
    model = build_pretrained(case)
    attach(model, LoraConfig(r=4, alpha=8, targets=case.targets))
    perturb(model)
    x = case.inputs()
    before = call(model, x)
    merge(model)
    torch.testing.assert_close(call(model, x), before, atol=TOL, rtol=0)
    unmerge(model)
    torch.testing.assert_close(call(model, x), before, atol=TOL, rtol=0)


def test_lora_only_bias_trains_exactly_the_biases_the_file_saves(tmp_path) -> None:
    from lora_studio.core.disk.peft_lora_format import adapter_tensors

    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True), nn.GRUCell(8, 8), nn.Linear(8, 4))
    attach(model, LoraConfig(r=2, targets=["0", "1", "2"], bias="lora_only"))
    trained = {name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name}
    saved = {key for key in adapter_tensors(model, "default") if "lora_" not in key}
    assert trained == {"0.base_layer.out_proj.bias", "2.base_layer.bias"}
    assert len(saved) == len(trained)  # nothing trains that the file would drop (the GRU cell's bool flag neither)
    folder = save_adapter(model, tmp_path / "a")
    assert folder.is_dir()
