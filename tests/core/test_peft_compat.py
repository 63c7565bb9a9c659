"""PEFT as an outside oracle: it loads what we save, and we load what it saves, with the same outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from io_models import BERT, BERT_CLS, CONV_NET, EMBEDDING_MODEL, GPT2, LAYER_CASES, call, fresh, minilm_folder, perturb
from io_models import pretrained as build_pretrained
from safetensors import safe_open

from lora_studio.core import LoraConfig, attach, load_adapter, save_adapter

peft = pytest.importorskip("peft")
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

TOL = 1e-5  # two independent implementations of the same float32 maths: only summation order differs


def _file_keys(folder, sub: str = "") -> set[str]:
    with safe_open(str(folder / sub / "adapter_model.safetensors"), "pt") as f:
        return set(f.keys())


def _peft_loads(folder, base, adapter_name: str = "default"):
    """Load with PEFT, fail on any missing or unexpected key, return the PEFT model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys.*")
        model = PeftModel.from_pretrained(base, str(folder), adapter_name=adapter_name)
    if model.peft_config[adapter_name].bias == "none":  # PEFT allows one adapter with trained biases only
        result = model.load_adapter(str(folder), adapter_name="check")  # the load result, with both key lists
        assert result.missing_keys == [] and result.unexpected_keys == []
    model.set_adapter(adapter_name)
    saved = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    peft_keys = {"base_model.model." + k.removeprefix("base_model.model.") for k in saved}
    return model.eval(), peft_keys


PEFT_CASES = [BERT, BERT_CLS, GPT2, CONV_NET, EMBEDDING_MODEL, *[c for c in LAYER_CASES if c.name in
              ("linear", "conv1d", "conv3d", "embedding", "gpt2_conv1d", "modules_to_save")]]  # fmt: skip


@pytest.mark.parametrize("case", PEFT_CASES, ids=lambda c: c.name)
def test_peft_loads_our_adapter_with_the_same_outputs(case, tmp_path):
    model = build_pretrained(case)
    attach(model, LoraConfig(r=4, alpha=8, targets=case.targets, modules_to_save=case.modules_to_save))
    perturb(model)
    x = case.inputs()
    save_adapter(model, tmp_path)
    peft_model, peft_keys = _peft_loads(tmp_path, build_pretrained(case))
    assert peft_keys == _file_keys(tmp_path)
    torch.testing.assert_close(call(peft_model, x), call(model, x), atol=TOL, rtol=0)


def test_peft_reads_ranks_alphas_rslora_and_a_named_adapter(tmp_path):
    model = build_pretrained(BERT)
    config = LoraConfig(r=4, alpha=8, targets="all-linear", layers=[1], rank_pattern={"query": 2},
                        alpha_pattern={"value": 3.0}, use_rslora=True, bias="lora_only")  # fmt: skip
    attach(model, config, adapter_name="mine")
    perturb(model)
    x = BERT.inputs()
    save_adapter(model, tmp_path, "mine")
    peft_model, peft_keys = _peft_loads(tmp_path / "mine", build_pretrained(BERT), adapter_name="mine")
    assert peft_keys == _file_keys(tmp_path, "mine")
    torch.testing.assert_close(call(peft_model, x), call(model, x), atol=TOL, rtol=0)


def test_peft_loads_a_converted_pissa_adapter_on_the_original_base(tmp_path):
    model = build_pretrained(BERT)
    attach(model, LoraConfig(r=2, alpha=4, targets=["query", "value"], init="pissa"))
    perturb(model, std=0.05)
    x = BERT.inputs()
    save_adapter(model, tmp_path, original_base=build_pretrained(BERT))
    peft_model, _ = _peft_loads(tmp_path, build_pretrained(BERT))
    torch.testing.assert_close(call(peft_model, x), call(model, x), atol=TOL, rtol=0)


def test_peft_ignores_conv_dilation_which_our_save_warns_about(tmp_path):
    """PEFT builds lora_A without the base conv's dilation: we say so on save rather than pretend."""
    case = next(c for c in LAYER_CASES if c.name == "conv2d_strided_dilated")
    model = build_pretrained(case)
    attach(model, LoraConfig(r=2, targets=case.targets))
    with pytest.warns(UserWarning, match="dilation"):
        save_adapter(model, tmp_path)


def _peft_trained(case, peft_config: PeftLoraConfig, seed: int = 3):
    model = get_peft_model(build_pretrained(case), peft_config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize(
    ("case", "peft_config"),
    [
        (BERT_CLS, dict(r=4, lora_alpha=8, target_modules=["query", "value", "word_embeddings"],
                        modules_to_save=["classifier"], rank_pattern={"layer.1.attention.self.query": 2},
                        alpha_pattern={"value": 5}, bias="all")),
        (GPT2, dict(r=3, lora_alpha=6, target_modules="all-linear", use_rslora=True)),
        (CONV_NET, dict(r=2, lora_alpha=2, target_modules=["conv1", "conv2"], modules_to_save=["classifier"],
                        init_lora_weights="gaussian")),
        (EMBEDDING_MODEL, dict(r=2, lora_alpha=4, target_modules=["embed_tokens"], layers_to_transform=None)),
        (BERT, dict(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights="pissa")),
    ],
    ids=["bert_cls", "gpt2", "conv_net", "embedding_model", "bert_pissa"],
)  # fmt: skip
def test_we_load_what_peft_saved(case, peft_config, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's own notes (fan_in_fan_out for GPT-2, saving embeddings)
        peft_model = _peft_trained(case, PeftLoraConfig(**peft_config))
        peft_model.save_pretrained(str(tmp_path))
    x = case.inputs()
    ours = load_adapter(fresh(case), tmp_path)
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)


def test_we_load_a_named_peft_adapter_from_its_sub_folder(tmp_path):
    peft_model = _peft_trained(BERT, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["key"]))
    peft_model.add_adapter("extra", PeftLoraConfig(r=3, lora_alpha=3, target_modules=["query"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".extra." in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(9))
    peft_model.set_adapter("extra")
    peft_model.save_pretrained(str(tmp_path))
    assert (tmp_path / "extra" / "adapter_config.json").is_file()
    x = BERT.inputs()
    ours = load_adapter(fresh(BERT), tmp_path, adapter_name="extra")
    torch.testing.assert_close(call(ours, x), call(peft_model, x), atol=TOL, rtol=0)


def test_real_minilm_round_trip_through_peft(tmp_path):
    from transformers import AutoModel

    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder).eval()
    attach(model, LoraConfig(r=4, alpha=8, targets=["query", "key", "value", "dense"]))
    perturb(model, std=0.05)
    x = {"input_ids": torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]]),
         "attention_mask": torch.ones(1, 7, dtype=torch.long)}  # fmt: skip
    save_adapter(model, tmp_path)
    peft_model, peft_keys = _peft_loads(tmp_path, AutoModel.from_pretrained(folder))
    assert peft_keys == _file_keys(tmp_path)
    torch.testing.assert_close(call(peft_model, x), call(model, x), atol=TOL, rtol=0)
    assert not torch.allclose(call(model, x), call(AutoModel.from_pretrained(folder).eval(), x), atol=1e-3)
