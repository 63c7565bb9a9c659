"""Every field of PEFT's LoraConfig is honoured or refused by name; init values, patterns and the
LoRA-in-another-storage options (VeLoRA, BD-LoRA) give PEFT's outputs, with PEFT as the oracle."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import pytest
import torch
from io_models import BERT, GPT2, IOCase, call, fresh, gen, perturb
from io_models import pretrained as build_pretrained
from torch import nn

from lora_studio.core import LoraConfig, attach, check_adapter_fit, load_adapter, save_adapter
from lora_studio.core.disk.peft_lora_keys import HONOURED, NO_EFFECT, REFUSED

peft = pytest.importorskip("peft")
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402

TOL = 1e-5


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.v = nn.Linear(8, 8)
        self.emb = nn.Embedding(12, 8)

    def forward(self, ids):
        return self.v(torch.relu(self.q(self.emb(ids))))


SMALL = IOCase("two_linears", TwoLinears, lambda: torch.randint(0, 12, (3, 5), generator=gen()), ["q", "v"])

# A value that asks for each refused option (the test fails for a refused key without one).
REFUSED_SAMPLES = {
    "lora_bias": True,
    "use_qalora": True,
    "layer_replication": [[0, 1]],
    "trainable_token_indices": [1, 2],
    "target_parameters": ["q.weight"],
    "megatron_config": {"tensor_model_parallel_size": 2},
    "alora_invocation_tokens": [5, 6],
    "monteclora_config": {"monteclora_n": 8},
    "arrow_config": {"top_k": 2},
    "kasa_config": {"beta": 0.0001, "gamma": 0.001},
}


def test_every_peft_lora_config_field_is_honoured_or_refused():
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    unclassified = sorted(fields - set(HONOURED) - set(NO_EFFECT) - set(REFUSED))
    assert unclassified == [], f"PEFT {peft.__version__} LoraConfig fields neither honoured nor refused: {unclassified}"
    assert not (set(HONOURED) & set(REFUSED)) and not (set(NO_EFFECT) & set(REFUSED))
    assert set(REFUSED_SAMPLES) == set(REFUSED)


def _peft_made(case: IOCase, folder, seed: int = 3, **config) -> nn.Module:
    """A PEFT adapter with random factors (B too), saved to ``folder``; returns PEFT's model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(build_pretrained(case), PeftLoraConfig(**({"r": 4, "lora_alpha": 8,
                               "target_modules": case.targets} | config))).eval()  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.2)
        model.save_pretrained(str(folder))
    return model


def _peft_reloaded(case: IOCase, folder) -> nn.Module:
    """What PEFT itself computes from ``folder`` on the pretrained base: the oracle for loading a file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(build_pretrained(case), str(folder)).eval()


def _edit_config(folder, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_a_refused_key_set_in_the_config_is_refused_by_name_and_the_model_kept(key, tmp_path):
    _peft_made(SMALL, tmp_path)
    _edit_config(tmp_path, **{key: REFUSED_SAMPLES[key]})
    model = fresh(SMALL)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"PEFT's {key}="):
        load_adapter(model, tmp_path)
    assert f"PEFT's {key}=" in (check_adapter_fit(model, tmp_path).problem or "")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_refused_key_left_at_its_default_is_accepted(tmp_path):
    _peft_made(SMALL, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(REFUSED) <= set(config)  # PEFT writes every field, at its default here
    load_adapter(fresh(SMALL), tmp_path)


def test_an_option_peft_adds_later_is_refused_by_name_not_ignored(tmp_path):
    _peft_made(SMALL, tmp_path)
    _edit_config(tmp_path, use_new_thing=True, some_metadata=None)
    with pytest.raises(ValueError, match=r"use_new_thing=True .* does not know"):
        load_adapter(fresh(SMALL), tmp_path)


def test_ensure_weight_tying_is_refused_only_on_a_model_with_tied_weights(tmp_path):
    _peft_made(SMALL, tmp_path / "untied")
    _edit_config(tmp_path / "untied", ensure_weight_tying=True)
    load_adapter(fresh(SMALL), tmp_path / "untied")
    _peft_made(GPT2, tmp_path / "tied", target_modules=["c_attn"])
    _edit_config(tmp_path / "tied", ensure_weight_tying=True)
    with pytest.raises(ValueError, match=r"ensure_weight_tying=True and this model has tied weights"):
        load_adapter(fresh(GPT2), tmp_path / "tied")


# -- init_lora_weights ----------------------------------------------------------------------------------
HONOURED_INITS = [True, False, "gaussian", "eva", "orthogonal", "lora_ga", "mica", "pissa", "olora", "olora_bert"]


@pytest.mark.parametrize("init", HONOURED_INITS)
def test_an_honoured_init_value_loads_with_peft_outputs(init, tmp_path):
    """PEFT's own reload of the folder is the oracle (for pissa and olora it re-runs the init on the base)."""
    case = BERT if init in ("pissa", "olora_bert") else SMALL
    init = "olora" if init == "olora_bert" else init
    targets = ["q", "v"] if case is SMALL else ["query", "value"]
    extra = {"eva_config": peft.EvaConfig()} if init == "eva" else {}
    extra |= {"alpha_pattern": {"value": 5}, "rank_pattern": {"query": 2}} if case is BERT else {}
    peft_model = _peft_made(case, tmp_path, init_lora_weights=init, target_modules=targets, **extra)
    x = case.inputs()
    ours = load_adapter(fresh(case), tmp_path)
    torch.testing.assert_close(call(ours, x), call(_peft_reloaded(case, tmp_path), x), atol=TOL, rtol=0)
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)  # and what PEFT trained
    assert not torch.allclose(call(ours, x), call(build_pretrained(case), x), atol=1e-3)


def test_olora_leaves_the_base_alone_and_is_refused_on_a_layer_peft_does_not_run_it_on(tmp_path):
    _peft_made(SMALL, tmp_path / "linear", init_lora_weights="olora")
    model = load_adapter(fresh(SMALL), tmp_path / "linear")
    pretrained = build_pretrained(SMALL)
    for name in ("q", "v"):  # PEFT rewrites these to OLoRA's residual; here they stay the base's
        assert torch.equal(getattr(model, name).base_layer.weight, getattr(pretrained, name).weight)
    _peft_made(SMALL, tmp_path / "embedding", target_modules=["emb"])
    _edit_config(tmp_path / "embedding", init_lora_weights="olora")
    with pytest.raises(ValueError, match=r"emb: .*olora.*nn.Linear layers only, and this layer is Embedding"):
        load_adapter(fresh(SMALL), tmp_path / "embedding")


@pytest.mark.parametrize(("init", "says"), [("pissa_niter_4", "path_initial_model_for_weight_conversion"),
                                             ("corda", "path_initial_model_for_weight_conversion"),
                                             ("loftq", "merge_and_unload")])  # fmt: skip
def test_an_init_that_rewrites_the_base_is_refused_by_value(init, says, tmp_path):
    _peft_made(SMALL, tmp_path)
    _edit_config(tmp_path, init_lora_weights=init)
    with pytest.raises(ValueError, match=rf"init_lora_weights='{init}'.*{says}"):
        load_adapter(fresh(SMALL), tmp_path)


# -- rank_pattern / alpha_pattern, both ways -------------------------------------------------------------
def test_rank_and_alpha_patterns_made_by_peft_load_with_its_outputs(tmp_path):
    patterns = {"rank_pattern": {"layer.1.attention.self.query": 2, "key": 3},
                "alpha_pattern": {"value": 5, r"layer\.0.*query": 1.5}}  # fmt: skip
    _peft_made(BERT, tmp_path, target_modules=["query", "value", "key"], use_rslora=True, **patterns)
    x = BERT.inputs()
    ours = load_adapter(fresh(BERT), tmp_path)
    torch.testing.assert_close(call(ours, x), call(_peft_reloaded(BERT, tmp_path), x), atol=TOL, rtol=0)


def test_rank_and_alpha_patterns_go_ours_to_peft_to_ours(tmp_path):
    model = build_pretrained(BERT)
    attach(model, LoraConfig(r=4, alpha=8, targets=["query", "value"], rank_pattern={"layer.1.attention.self.query": 2},
                             alpha_pattern={"value": 3.0}))  # fmt: skip
    perturb(model)
    x = BERT.inputs()
    save_adapter(model, tmp_path / "ours")
    peft_model = _peft_reloaded(BERT, tmp_path / "ours")
    torch.testing.assert_close(call(peft_model, x), call(model, x), atol=TOL, rtol=0)
    peft_model.save_pretrained(str(tmp_path / "peft"))  # PEFT writes its own config from what it read
    back = load_adapter(fresh(BERT), tmp_path / "peft")
    torch.testing.assert_close(call(back, x), call(model, x), atol=TOL, rtol=0)


# -- LoRA in another storage: VeLoRA, BD-LoRA -------------------------------------------------------------
def test_a_velora_adapter_loads_as_the_lora_it_computes(tmp_path):
    peft_model = _peft_made(SMALL, tmp_path, velora_config=peft.VeloraConfig(num_groups=2, init_type="random"))
    x = SMALL.inputs()
    ours = load_adapter(fresh(SMALL), tmp_path)
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)
    torch.testing.assert_close(call(ours, x), call(_peft_reloaded(SMALL, tmp_path), x), atol=TOL, rtol=0)


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_a_bdlora_adapter_loads_as_its_dense_factors(blocks, tmp_path):
    bd = peft.BdLoraConfig(target_modules_bd_a=["q"], target_modules_bd_b=["v"], nblocks=blocks)
    peft_model = _peft_made(SMALL, tmp_path, use_bdlora=bd)
    x = SMALL.inputs()
    ours = load_adapter(fresh(SMALL), tmp_path)
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)
    torch.testing.assert_close(call(ours, x), call(_peft_reloaded(SMALL, tmp_path), x), atol=TOL, rtol=0)
