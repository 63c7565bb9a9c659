"""save_adapter / load_adapter: round trips for every layer type, several adapters, mismatches refused cleanly."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from io_models import BERT, BERT_CLS, LAYER_CASES, build, call, fresh, perturb, pretrained
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.core import (
    AdapterMismatchError,
    LoraConfig,
    active_adapter,
    attach,
    get_adapter_config,
    list_adapters,
    load_adapter,
    save_adapter,
    set_active_adapter,
)
from lora_studio.core.disk.adapter_folder import ADAPTER_WEIGHTS_NAME, STUDIO_METADATA_NAME

TOL = 1e-6  # a round trip copies float32 factors bit for bit; outputs may differ only by summation order


def _adapted(case, seed_perturb: int = 7, **config):
    model = pretrained(case)
    attach(model, LoraConfig(r=3, alpha=6, targets=case.targets, modules_to_save=case.modules_to_save, **config))
    perturb(model, seed=seed_perturb)
    return model


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.name)
def test_round_trip_every_layer_type(case, tmp_path):
    model = _adapted(case)
    x = case.inputs()
    expected = call(model, x)
    assert not torch.allclose(expected, call(pretrained(case), x)), "the adapter must change the output"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight-space and dilated layers warn that PEFT cannot rebuild them
        save_adapter(model, tmp_path)
    other = load_adapter(fresh(case), tmp_path)
    torch.testing.assert_close(call(other, x), expected, atol=TOL, rtol=0)


def test_file_layout_is_peft_format(tmp_path):
    model = _adapted(BERT_CLS)
    save_adapter(model, tmp_path)
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight" in keys
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    assert not any(".default" in k or "base_layer" in k for k in keys)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 3 and config["lora_alpha"] == 6
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
    studio = json.loads((tmp_path / STUDIO_METADATA_NAME).read_text())
    assert studio["variant"] == "lora" and studio["config"]["targets"] == ["query", "value"]
    assert set(studio["base_model"]) >= {"class", "structure", "values"}


def test_patterns_rslora_gaussian_and_bias_round_trip(tmp_path):
    model = _adapted(
        BERT,
        rank_pattern={"layer.1.attention.self.query": 5},
        alpha_pattern={"value": 2.5},
        use_rslora=True,
        init="gaussian",
        bias="all",
    )
    with torch.no_grad():  # trained biases must travel with the adapter
        model.encoder.layer[0].attention.output.dense.base_layer.bias.add_(0.3)
    x = BERT.inputs()
    expected = call(model, x)
    save_adapter(model, tmp_path)
    torch.testing.assert_close(call(load_adapter(fresh(BERT), tmp_path), x), expected, atol=TOL, rtol=0)


def test_several_adapters_use_sub_folders_and_load_side_by_side(tmp_path):
    model = _adapted(BERT)
    attach(model, LoraConfig(r=2, alpha=4, targets=["key"]), adapter_name="second")
    perturb(model, seed=11)
    x = BERT.inputs()
    set_active_adapter(model, "second")
    expected_second = call(model, x)
    set_active_adapter(model, "default")
    expected_default = call(model, x)
    save_adapter(model, tmp_path)
    assert save_adapter(model, tmp_path, "second") == tmp_path / "second"
    assert (tmp_path / "second" / ADAPTER_WEIGHTS_NAME).is_file()

    other = load_adapter(fresh(BERT), tmp_path)
    load_adapter(other, tmp_path, adapter_name="second")  # found in its sub-folder
    assert list_adapters(other) == ["default", "second"] and active_adapter(other) == "second"
    torch.testing.assert_close(call(other, x), expected_second, atol=TOL, rtol=0)
    set_active_adapter(other, "default")
    torch.testing.assert_close(call(other, x), expected_default, atol=TOL, rtol=0)


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [type(m).__name__ for m in model.modules()],
        list_adapters(model),
        active_adapter(model),
    )


def _assert_unchanged(model, before):
    state, grads, types, adapters, active = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert [type(m).__name__ for m in model.modules()] == types
    assert list_adapters(model) == adapters and active_adapter(model) == active


def _saved_then_edited(folder, edit) -> None:
    """Save a BERT adapter to ``folder``, then let ``edit`` change its tensors in place on disk."""
    save_adapter(_adapted(BERT), folder)
    weights = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    edit(weights)
    save_file(weights, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})


def test_wrong_shapes_name_the_key_and_leave_the_model_as_it_was(tmp_path):
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    _saved_then_edited(tmp_path, lambda weights: weights.__setitem__(key, torch.zeros(3, 31)))

    target = fresh(BERT)
    attach(target, LoraConfig(targets=["key"]), adapter_name="existing")
    before = _snapshot(target)
    with pytest.raises(AdapterMismatchError) as err:
        load_adapter(target, tmp_path, adapter_name="new")
    assert key in str(err.value) and "[3, 31]" in str(err.value) and "[3, 32]" in str(err.value)
    _assert_unchanged(target, before)


def test_missing_key_is_named_and_plain_model_untouched(tmp_path):
    key = "base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"
    _saved_then_edited(tmp_path, lambda weights: weights.pop(key))
    target = fresh(BERT)
    before = _snapshot(target)
    with pytest.raises(AdapterMismatchError, match="value.lora_B.weight: missing"):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, before)


def test_other_base_model_is_refused(tmp_path):
    save_adapter(_adapted(BERT_CLS), tmp_path)  # keys under bert.* do not exist in a plain BertModel
    target = fresh(BERT)
    before = _snapshot(target)
    with pytest.raises(AdapterMismatchError, match="has no module 'bert.encoder"):
        load_adapter(target, tmp_path)
    _assert_unchanged(target, before)


def test_loading_warns_when_the_base_weights_differ(tmp_path):
    save_adapter(_adapted(BERT), tmp_path)
    with pytest.warns(UserWarning, match="different weights"):
        load_adapter(build(BERT, seed=99), tmp_path)


def test_pissa_is_saved_as_it_is_without_the_original_base_and_converted_with_it(tmp_path):
    """init='pissa' (older configs, PEFT's spelling) is the PiSSA variant: saved as it is, reloading re-runs
    the SVD on the original base; with original_base it becomes plain LoRA of rank 2r for any loader."""
    case = LAYER_CASES[0]
    model = _adapted(case, init="pissa")
    assert get_adapter_config(model).variant == "pissa"
    x = case.inputs()
    expected = call(model, x)
    save_adapter(model, tmp_path / "as_is")
    torch.testing.assert_close(call(load_adapter(fresh(case), tmp_path / "as_is"), x), expected, atol=1e-5, rtol=0)
    save_adapter(model, tmp_path, original_base=pretrained(case))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 12 and config["init_lora_weights"] is True
    # On the *original* base the converted plain adapter reproduces the PiSSA model (up to the SVD's rounding).
    torch.testing.assert_close(call(load_adapter(fresh(case), tmp_path), x), expected, atol=1e-5, rtol=0)


def test_legacy_bin_adapter_loads_with_a_warning(tmp_path):
    model = _adapted(BERT)
    x = BERT.inputs()
    save_adapter(model, tmp_path)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    (tmp_path / ADAPTER_WEIGHTS_NAME).unlink()
    torch.save(weights, tmp_path / "adapter_model.bin")
    with pytest.warns(UserWarning, match="weights_only=True"):
        other = load_adapter(fresh(BERT), tmp_path)
    torch.testing.assert_close(call(other, x), call(model, x), atol=TOL, rtol=0)


def test_loading_does_not_move_the_global_random_stream(tmp_path):
    save_adapter(_adapted(BERT), tmp_path)
    target = fresh(BERT)
    torch.manual_seed(5)
    load_adapter(target, tmp_path)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
