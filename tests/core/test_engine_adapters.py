"""Several named adapters on one model; combining adapters; PiSSA initialisation."""

import copy

import pytest
import torch
from tiny_models import LAYER_CASES, MODEL_CASES, Case, perturb_adapters, run

from lora_studio.core import (
    AdapterLayer,
    LoraConfig,
    ModulesToSave,
    active_adapter,
    adapter_layers,
    add_weighted_adapter,
    attach,
    delete_adapter,
    disable_adapters,
    list_adapters,
    merge,
    set_active_adapter,
    unload,
    unmerge,
)

TOL = 1e-5


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(16, 8, padding_idx=0),
        torch.nn.Linear(8, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 4),
    ).eval()


def _ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 0, 9], [3, 3, 2, 15]])


def _two_adapters() -> tuple[torch.nn.Module, torch.nn.Module]:
    base = _net()
    model = copy.deepcopy(base)
    attach(model, LoraConfig(r=2, alpha=4, targets=["0", "1", "3"]), "a")
    perturb_adapters(model, seed=1)
    attach(model, LoraConfig(r=3, alpha=3, targets=["1", "3"], modules_to_save=[]), "b")
    perturb_adapters(model, seed=2)  # re-randomises a too: both are non-trivial
    return base, model


def test_add_switch_disable_delete() -> None:
    base, model = _two_adapters()
    x = _ids()
    assert list_adapters(model) == ["a", "b"]
    assert active_adapter(model) == "b", "attach activates the adapter it adds"
    with torch.no_grad():
        out_b = model(x)
        set_active_adapter(model, "a")
        out_a = model(x)
        assert (out_a - out_b).abs().max() > 1e-3
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".a." in n or n.endswith(".a") for n in trainable), sorted(trainable)
        with disable_adapters(model):
            torch.testing.assert_close(model(x), base(x), atol=0, rtol=0)
        torch.testing.assert_close(model(x), out_a, atol=0, rtol=0)
        merge(model)
        with disable_adapters(model):  # merged updates come out for the block, and go back after
            torch.testing.assert_close(model(x), base(x), atol=TOL, rtol=0)
        assert all(layer.merged for _, layer in adapter_layers(model) if "a" in layer.adapter_names)
        torch.testing.assert_close(model(x), out_a, atol=TOL, rtol=0)
        unmerge(model)
        delete_adapter(model, "a")
        assert list_adapters(model) == ["b"] and active_adapter(model) == "b"
        assert isinstance(model[0], torch.nn.Embedding), "a layer left with no adapter gets its original back"
        torch.testing.assert_close(model(x), out_b, atol=TOL, rtol=0)
        delete_adapter(model, "b")
        assert not any(isinstance(m, (AdapterLayer, ModulesToSave)) for m in model.modules())
        torch.testing.assert_close(model(x), base(x), atol=TOL, rtol=0)


def test_unload_gives_back_the_base() -> None:
    base, model = _two_adapters()
    merge(model)
    plain = unload(model)
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    torch.testing.assert_close(plain(_ids()), base(_ids()), atol=TOL, rtol=0)


def test_adapter_errors_are_clear() -> None:
    _, model = _two_adapters()
    with pytest.raises(ValueError, match="already exists"):
        attach(model, LoraConfig(targets=["1"]), "a")
    with pytest.raises(ValueError, match="no adapter named 'zzz'.*a, b"):
        set_active_adapter(model, "zzz")
    with pytest.raises(ValueError, match="adapter_name"):
        attach(model, LoraConfig(targets=["1"]), "with.dot")


def test_failed_attach_leaves_model_exactly_as_it_was() -> None:
    model = _net()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="PiSSA needs rank"):
        attach(model, LoraConfig(r=5, targets=["1", "3"], init="pissa"))  # layer 1 fits, layer 3 (12->4) not
    assert str(model) == str(before)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    assert list_adapters(model) == []


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


def test_cat_combination_equals_sum_of_parts() -> None:
    _, model = _two_adapters()
    x = _ids()
    with torch.no_grad():
        merge(model, "a")
        merge(model, "b")  # the base now holds W + Δa + Δb
        expected = _weights(model)
        out_sum = model(x)
        unmerge(model)
        add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "cat", combination_type="cat")
        layer = model[1]
        assert layer.r["cat"] == 2 + 3, "cat adds ranks"
        set_active_adapter(model, "cat")
        torch.testing.assert_close(model(x), out_sum, atol=TOL, rtol=0)
        merge(model)
        for name, weight in _weights(model).items():
            torch.testing.assert_close(weight, expected[name], atol=TOL, rtol=0)


def test_svd_at_full_rank_equals_cat_and_linear_where_linear_is_exact() -> None:
    _, model = _two_adapters()
    x = _ids()
    with torch.no_grad():
        add_weighted_adapter(model, ["a", "b"], [0.7, -0.4], "cat", combination_type="cat")
        add_weighted_adapter(model, ["a", "b"], [0.7, -0.4], "svd", combination_type="svd", svd_rank=5)
        set_active_adapter(model, "cat")
        out_cat = model(x)
        set_active_adapter(model, "svd")
        torch.testing.assert_close(model(x), out_cat, atol=TOL, rtol=0)
        # 'linear' is exact for one adapter: 0.7·Δa, which svd reproduces at full rank.
        add_weighted_adapter(model, ["a"], [0.7], "lin", combination_type="linear")
        add_weighted_adapter(model, ["a"], [0.7], "svd_a", combination_type="svd")
        set_active_adapter(model, "lin")
        out_lin = model(x)
        set_active_adapter(model, "svd_a")
        torch.testing.assert_close(model(x), out_lin, atol=TOL, rtol=0)
        # and a low-rank svd is a real approximation, not a copy
        add_weighted_adapter(model, ["a", "b"], [0.7, -0.4], "svd1", combination_type="svd", svd_rank=1)
        set_active_adapter(model, "svd1")
        assert (model(x) - out_cat).abs().max() > 1e-4


def test_combination_refuses_bad_requests() -> None:
    _, model = _two_adapters()
    with pytest.raises(ValueError, match="equal ranks"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="linear")
    with pytest.raises(ValueError, match="same length"):
        add_weighted_adapter(model, ["a", "b"], [1], "x")
    with pytest.raises(ValueError, match="no adapter named"):
        add_weighted_adapter(model, ["a", "nope"], [1, 1], "x")


PISSA_CASES = [c for c in LAYER_CASES if c.name not in ("rnn_cell", "lstm_cell", "gru_cell")] + [
    c for c in MODEL_CASES if c.name in ("bert", "gpt2")
]


@pytest.mark.parametrize("case", PISSA_CASES, ids=lambda c: c.name)
def test_pissa_base_plus_adapter_reproduces_original(case: Case) -> None:
    base = case.build()
    model = attach(copy.deepcopy(base), LoraConfig(r=2, targets=case.targets, init="pissa"))
    for name, layer in adapter_layers(model):
        original = base.get_submodule(name)
        for key, slot in layer.weight_slots().items():
            reconstructed = slot.param.float() + layer.delta_weight("default", key)
            torch.testing.assert_close(reconstructed, original.get_parameter(key).float(), atol=case.tolerance, rtol=0)
            assert layer.delta_weight("default", key).abs().max() > 1e-3, "PiSSA factors carry the principal part"
    x = case.make_input()
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), run(base, x), atol=case.tolerance * 10, rtol=1e-4)
