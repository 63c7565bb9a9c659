"""Combining adapters: every method against PEFT's ``add_weighted_adapter`` as the oracle, (1, 0) weights,
PEFT loading a combined adapter we saved, and the refusals with their reasons."""

from __future__ import annotations

import pytest
import torch
from io_models import CONV_NET, EMBEDDING_MODEL, GPT2, IOCase, call, perturb, pretrained

from lora_studio.core import (
    COMBINATION_TYPES,
    LoraConfig,
    adapter_layers,
    add_weighted_adapter,
    attach,
    combination_problem,
    delete_adapter,
    list_adapters,
    save_adapter,
    set_active_adapter,
)

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402

TOL = 1e-5  # the same float32 maths in two implementations: only summation order differs
SEED = 1234
WEIGHTS = [0.7, -0.4]
# Linear, 2-D convolutions, an embedding, and GPT-2's transposed Conv1D weights.
CASES = [
    IOCase("conv_net", CONV_NET.make, CONV_NET.inputs, ["conv1", "conv2", "classifier"]),
    EMBEDDING_MODEL,
    GPT2,
]
METHODS = list(COMBINATION_TYPES)


def _two_adapters(case: IOCase, rank_b: int = 4) -> torch.nn.Module:
    model = pretrained(case)
    attach(model, LoraConfig(r=4, alpha=8, targets=case.targets), adapter_name="a")
    attach(model, LoraConfig(r=rank_b, alpha=3, targets=case.targets), adapter_name="b")
    perturb(model, std=0.3)
    return model


def _peft_twin(model: torch.nn.Module, case: IOCase, folder) -> PeftModel:
    """A PEFT model holding the same two adapters (their factors copied through our saved folders)."""
    save_adapter(model, folder, "a")
    save_adapter(model, folder, "b")
    twin = PeftModel.from_pretrained(pretrained(case), str(folder / "a"), adapter_name="a")
    twin.load_adapter(str(folder / "b"), adapter_name="b")
    return twin.eval()


def _peft_combine(twin: PeftModel, monkeypatch, **kwargs) -> None:
    """PEFT's add_weighted_adapter, with the global generator re-seeded after it creates the new adapter's
    layers (whose initialisation draws random numbers), so DARE's masks come from the same stream as ours."""
    inner = twin.base_model
    original = inner.inject_adapter

    def inject_then_seed(*args, **kw):
        result = original(*args, **kw)
        torch.manual_seed(SEED)
        return result

    monkeypatch.setattr(inner, "inject_adapter", inject_then_seed)
    twin.add_weighted_adapter(**kwargs)
    monkeypatch.setattr(inner, "inject_adapter", original)


def _settings(method: str) -> dict:
    return {"density": 0.5, "majority_sign_method": "total"} if method not in ("linear", "cat", "svd") else {}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_equals_peft(case, method, tmp_path, monkeypatch):
    equal_ranks = method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
    model = _two_adapters(case, rank_b=4 if equal_ranks else 2)
    twin = _peft_twin(model, case, tmp_path)
    x = case.inputs()
    kwargs = {"adapters": ["a", "b"], "weights": WEIGHTS, "combination_type": method, **_settings(method)}
    if method.endswith("svd"):
        kwargs["svd_rank"] = 3
    _peft_combine(twin, monkeypatch, adapter_name="mix", **kwargs)
    torch.manual_seed(SEED)
    add_weighted_adapter(model, new_name="mix", **kwargs)
    twin.set_adapter("mix")
    set_active_adapter(model, "mix")
    ours, theirs = call(model, x), call(twin, x)
    set_active_adapter(model, None)
    base = call(model, x)
    assert (ours - base).abs().max() > 1e-3, "the combined adapter changes the output"
    # Relative to the outputs' size, as below: the SVD methods' float32 factorisations differ between CPUs'
    # LAPACK builds (seen: 2.7e-5 on outputs up to ~10 on an AMD EPYC, 2.7e-6 relative).
    torch.testing.assert_close(ours, theirs, atol=TOL * max(1.0, float(theirs.abs().max())), rtol=0)


@pytest.mark.parametrize("method", ["ties", "magnitude_prune_svd", "dare_ties_svd"])
def test_frequency_sign_election_and_clamp_equal_peft(method, tmp_path, monkeypatch):
    case = CASES[0]
    model = _two_adapters(case)
    twin = _peft_twin(model, case, tmp_path)
    kwargs = {"adapters": ["a", "b"], "weights": [0.9, 0.6], "combination_type": method, "density": 0.3,
              "majority_sign_method": "frequency"}  # fmt: skip
    if method.endswith("svd"):
        kwargs["svd_clamp"] = 0.9
    _peft_combine(twin, monkeypatch, adapter_name="mix", **kwargs)
    torch.manual_seed(SEED)
    add_weighted_adapter(model, new_name="mix", **kwargs)
    twin.set_adapter("mix")
    set_active_adapter(model, "mix")
    torch.testing.assert_close(call(model, case.inputs()), call(twin, case.inputs()), atol=TOL, rtol=0)


# Methods that keep an adapter's update when the other's weight is 0 (density 1: nothing pruned).  The TIES
# ones do not: their sign election and average count the zero-weighted adapter's entries (PEFT's definition).
UNCHANGED_AT_ONE_ZERO = ["linear", "cat", "svd", "dare_linear", "magnitude_prune", "dare_linear_svd",
                         "magnitude_prune_svd"]  # fmt: skip


@pytest.mark.parametrize("method", UNCHANGED_AT_ONE_ZERO)
def test_weights_one_zero_give_the_first_adapter(method):
    case = CASES[0]
    model = _two_adapters(case)
    x = case.inputs()
    set_active_adapter(model, "a")
    first = call(model, x)
    settings = {"density": 1.0} if method not in ("linear", "cat", "svd") else {}
    with pytest.warns(UserWarning, match="nothing is pruned") if settings else _no_warning():
        add_weighted_adapter(model, ["a", "b"], [1.0, 0.0], "mix", combination_type=method, **settings)
    set_active_adapter(model, "mix")
    # An SVD recomputes the factors: float32 round-off grows with the output's size (here up to ~4).
    torch.testing.assert_close(call(model, x), first, atol=TOL * max(1.0, float(first.abs().max())), rtol=0)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("method", ["ties", "dare_ties_svd", "cat"])
def test_peft_loads_a_combined_adapter_we_saved(method, tmp_path):
    case = CASES[0]
    model = _two_adapters(case, rank_b=4 if method == "ties" else 2)
    torch.manual_seed(SEED)
    add_weighted_adapter(model, ["a", "b"], WEIGHTS, "mix", combination_type=method, density=0.6)
    set_active_adapter(model, "mix")
    x = case.inputs()
    save_adapter(model, tmp_path, "mix")
    loaded = PeftModel.from_pretrained(pretrained(case), str(tmp_path / "mix"), adapter_name="mix").eval()
    torch.testing.assert_close(call(loaded, x), call(model, x), atol=TOL, rtol=0)


def test_dare_is_unbiased_in_expectation():
    """DARE's rescaling keeps the expected update: the mean over many seeds approaches the linear result."""
    case = CASES[0]
    model = _two_adapters(case)
    x = case.inputs()
    add_weighted_adapter(model, ["a", "b"], WEIGHTS, "exact", combination_type="svd", svd_rank=8)
    set_active_adapter(model, "exact")
    exact = call(model, x)
    outs = []
    for seed in range(40):
        torch.manual_seed(seed)
        add_weighted_adapter(model, ["a", "b"], WEIGHTS, "d", combination_type="dare_linear_svd", density=0.5,
                             svd_rank=8)  # fmt: skip
        set_active_adapter(model, "d")
        outs.append(call(model, x))
        set_active_adapter(model, "exact")
        delete_adapter(model, "d")
    mean = torch.stack(outs).mean(0)
    spread = torch.stack(outs).std(0).max()
    # 40 draws: the mean's error is about spread/sqrt(40); allow 4 standard errors.
    assert (mean - exact).abs().max() < 4 * spread / 40**0.5 + 1e-6
    assert spread > 1e-4, "the draws really differ"


def test_refusals_name_the_reason_and_the_method_that_works():
    case = CASES[0]
    model = _two_adapters(case, rank_b=2)
    with pytest.raises(ValueError, match=r"needs equal ranks.*'ties_svd' or 'cat'"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="ties", density=0.5)
    with pytest.raises(ValueError, match=r"needs equal ranks.*'svd' or 'cat'"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="linear")
    with pytest.raises(ValueError, match="needs density"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="dare_linear_svd")
    with pytest.raises(ValueError, match="0 < density <= 1"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="ties_svd", density=1.5)
    with pytest.raises(ValueError, match="majority_sign_method"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="ties_svd", density=0.5,
                             majority_sign_method="mean")  # fmt: skip
    with pytest.raises(ValueError, match="combination_type must be one of"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "x", combination_type="average")
    attach(model, LoraConfig(r=4, targets=case.targets, variant="dora"), adapter_name="d")
    with pytest.raises(ValueError, match="DoRA.*merge it into the base"):
        add_weighted_adapter(model, ["a", "d"], [1, 1], "x", combination_type="cat")
    assert list_adapters(model) == ["a", "b", "d"], "a refused combination adds nothing"
    assert combination_problem(model, ["a", "b"], [1, 1], "cat") is None


def test_refuses_loha_and_mixed_variants():
    case = CASES[0]
    model = pretrained(case)
    attach(model, LoraConfig(r=4, targets=case.targets), adapter_name="a")
    attach(model, LoraConfig(r=4, targets=case.targets, variant="loha"), adapter_name="h")
    assert "LoHa" in combination_problem(model, ["a", "h"], [1, 1], "svd")
    attach(model, LoraConfig(r=4, targets=["conv1", "conv2"], init="pissa"), adapter_name="p")
    problem = combination_problem(model, ["a", "p"], [1, 1], "svd")
    assert "different variants" in problem and "one variant" in problem


def test_adapters_on_different_layers_combine_where_each_is():
    """A layer only one adapter adapts gets that adapter's weighted update (the other adds nothing there)."""
    case = CASES[0]
    model = pretrained(case)
    attach(model, LoraConfig(r=4, alpha=8, targets=["conv1", "conv2"]), adapter_name="a")
    attach(model, LoraConfig(r=4, alpha=8, targets=["conv2", "classifier"]), adapter_name="b")
    perturb(model)
    add_weighted_adapter(model, ["a", "b"], [0.5, 2.0], "mix", combination_type="cat")
    layers = dict(adapter_layers(model))
    expected_parts = {"conv1": [("a", 0.5)], "conv2": [("a", 0.5), ("b", 2.0)], "classifier": [("b", 2.0)]}
    for name, adapters in expected_parts.items():
        layer = layers[name]
        expected = sum(w * layer.delta_weight(a) for a, w in adapters)
        torch.testing.assert_close(layer.delta_weight("mix"), expected, atol=TOL, rtol=0)


def test_trained_heads_are_refused_unless_asked_for():
    model = _with_heads()
    with pytest.raises(ValueError, match=r"modules_to_save: classifier.*combine_modules_to_save=True"):
        add_weighted_adapter(model, ["a", "b"], [0.5, 0.5], "mix", combination_type="cat")
    assert list_adapters(model) == ["a", "b"]


def _with_heads() -> torch.nn.Module:
    """Two adapters that each also train their own copy of the classifier head (modules_to_save)."""
    model = pretrained(CONV_NET)
    for name in ("a", "b"):
        attach(model, LoraConfig(r=4, alpha=8, targets=["conv1", "conv2"], modules_to_save=["classifier"]),
               adapter_name=name)  # fmt: skip
    perturb(model, std=0.3)
    return model


@pytest.mark.parametrize("method", ["linear", "cat", "svd", "magnitude_prune", "dare_linear_svd"])
def test_trained_heads_combine_by_their_changes(method):
    model = _with_heads()
    x = CONV_NET.inputs()
    set_active_adapter(model, "a")
    first = call(model, x)
    settings = {"density": 1.0} if method not in ("linear", "cat", "svd") else {}
    with pytest.warns(UserWarning, match="nothing is pruned") if settings else _no_warning():
        add_weighted_adapter(model, ["a", "b"], [1.0, 0.0], "one_zero", combination_type=method, **settings,
                             combine_modules_to_save=True)  # fmt: skip
    set_active_adapter(model, "one_zero")
    torch.testing.assert_close(call(model, x), first, atol=TOL * max(1.0, float(first.abs().max())), rtol=0)

    add_weighted_adapter(model, ["a", "b"], [0.25, 0.5], "mix", combination_type="cat", combine_modules_to_save=True)
    head = model.classifier
    original = head.original_module.weight
    expected = original + 0.25 * (head.modules_to_save["a"].weight - original) + 0.5 * (
        head.modules_to_save["b"].weight - original)
    torch.testing.assert_close(head.modules_to_save["mix"].weight, expected, atol=1e-6, rtol=0)


def test_a_combined_adapter_with_a_head_round_trips_through_peft(tmp_path):
    model = _with_heads()
    add_weighted_adapter(model, ["a", "b"], [0.6, 0.4], "mix", combination_type="ties", density=0.5,
                         combine_modules_to_save=True)  # fmt: skip
    set_active_adapter(model, "mix")
    save_adapter(model, tmp_path, "mix")
    loaded = PeftModel.from_pretrained(pretrained(CONV_NET), str(tmp_path / "mix"), adapter_name="mix").eval()
    torch.testing.assert_close(call(loaded, CONV_NET.inputs()), call(model, CONV_NET.inputs()), atol=TOL, rtol=0)
