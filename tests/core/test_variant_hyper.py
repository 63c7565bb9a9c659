"""Hyper-LoRA: factors generated from the task embedding, identity at start, merge for a chosen embedding.

Tolerance: TOL (float32) for outputs that must be equal; convolution/attention cases use the case's own.
"""

import pytest
import torch
from tiny_models import LAYER_CASES, perturb_adapters, run

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    count_parameters,
    disable_adapters,
    merge,
    unmerge,
    variant_inputs,
)
from lora_studio.core.variants.conditioned import MissingVariantInputError

TOL = 1e-6
EMBEDDING_DIM = 4
HIDDEN_DIM = 6
CASES = [c for c in LAYER_CASES if c.name in ("linear", "conv2d_strided_dilated", "embedding",
                                               "multihead_attention", "lstm_cell")]


def _config(case) -> LoraConfig:
    return LoraConfig(r=4, alpha=8, targets=case.targets, variant="hyper",
                      variant_settings={"embedding_dim": EMBEDDING_DIM, "hidden_dim": HIDDEN_DIM})


def _embedding(seed: int) -> torch.Tensor:
    return torch.randn(EMBEDDING_DIM, generator=torch.Generator().manual_seed(seed))


def _output(model, case, **inputs) -> torch.Tensor:
    with torch.no_grad(), variant_inputs(model, **inputs):
        return run(model, case.make_input())


def _hyper(case, perturb: bool = True):
    torch.manual_seed(0)
    model = attach(case.build(), _config(case))
    if perturb:
        perturb_adapters(model)
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fresh_adapter_is_the_identity_for_any_embedding(case) -> None:
    model = _hyper(case, perturb=False)
    with disable_adapters(model):
        base = _output(model, case)
    for seed in (1, 2):
        torch.testing.assert_close(_output(model, case, task_embedding=_embedding(seed)), base, atol=TOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_merge_for_an_embedding_equals_running_with_it(case) -> None:
    model = _hyper(case)
    tol = max(TOL, case.tolerance)
    with disable_adapters(model):
        base = _output(model, case)
    e1, e2 = _embedding(1), _embedding(2)
    out1, out2 = _output(model, case, task_embedding=e1), _output(model, case, task_embedding=e2)
    assert (out1 - out2).abs().max() > 1e-3, "the embedding changes the generated update"
    embedding = e1.clone()
    merge(model, task_embedding=embedding)
    embedding.add_(5.0)  # the caller reusing its tensor must not change what unmerge takes out
    torch.testing.assert_close(_output(model, case), out1, atol=tol, rtol=0)  # no embedding needed now
    unmerge(model)
    with disable_adapters(model):
        torch.testing.assert_close(_output(model, case), base, atol=tol, rtol=0)
    merge(model, task_embedding=e2)
    torch.testing.assert_close(_output(model, case), out2, atol=tol, rtol=0)


def test_generated_factors_follow_the_formula() -> None:
    case = CASES[0]
    model = _hyper(case)
    (_, layer), = adapter_layers(model)
    e = _embedding(3)
    generator = layer.lora_hyper["default"]
    a0, b0 = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad(), variant_inputs(model, task_embedding=e):
        z = torch.tanh(generator.trunk.weight @ e + generator.trunk.bias) / HIDDEN_DIM**0.5
        a, b = layer.behaviours["default"].factors(layer, "default", "weight")
        torch.testing.assert_close(a, a0 + (generator.heads_A["weight"] @ z).view_as(a0), atol=TOL, rtol=0)
        torch.testing.assert_close(b, b0 + (generator.heads_B["weight"] @ z).view_as(b0), atol=TOL, rtol=0)
        x = case.make_input()
        expected = layer.base_layer(x) + layer.scaling["default"] * (x @ a.t() @ b.t())
        torch.testing.assert_close(layer(x), expected, atol=TOL, rtol=0)


def test_a_learned_embedding_receives_a_gradient() -> None:
    case = CASES[0]
    model = _hyper(case)
    embedding = _embedding(1).requires_grad_()
    with variant_inputs(model, task_embedding=embedding):
        run(model, case.make_input()).square().sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_a_row_embedding_equals_a_vector() -> None:
    case = CASES[0]
    model = _hyper(case)
    e = _embedding(1)
    torch.testing.assert_close(_output(model, case, task_embedding=e[None]),
                               _output(model, case, task_embedding=e), atol=0, rtol=0)


def test_missing_embedding_names_the_input_and_how_to_pass_it() -> None:
    case = CASES[0]
    model = _hyper(case)
    with pytest.raises(MissingVariantInputError, match=r"task_embedding.*variant_inputs\(model, task_embedding=e\)"):
        run(model, case.make_input())
    with pytest.raises(MissingVariantInputError, match=r"merge\(model, task_embedding=e\)"):
        merge(model)


@pytest.mark.parametrize("embedding, message", [
    (torch.zeros(4, EMBEDDING_DIM), r"one vector of size embedding_dim=4 for the whole batch.*\(4, 4\)"),
    (torch.zeros(EMBEDDING_DIM + 1), r"embedding_dim=4.*got shape \(5,\)"),
    (torch.zeros(EMBEDDING_DIM, dtype=torch.long), r"float vector, got dtype torch.int64"),
])  # fmt: skip
def test_bad_embeddings_are_refused_clearly(embedding, message) -> None:
    case = CASES[0]
    model = _hyper(case)
    with pytest.raises(ValueError, match=message), variant_inputs(model, task_embedding=embedding):
        run(model, case.make_input())


def test_one_adapter_learns_two_tasks_from_their_embeddings() -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x = torch.randn(64, 8)
    with torch.no_grad():
        targets = [base(x) + 1.0, base(x) - 1.0]  # opposite shifts: only the embedding tells them apart
    embeddings = [torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])]
    model = attach(base, LoraConfig(r=4, alpha=8, targets=["0", "2"], variant="hyper",
                                    variant_settings={"embedding_dim": EMBEDDING_DIM, "hidden_dim": HIDDEN_DIM}))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def loss(task: int) -> torch.Tensor:
        with variant_inputs(model, task_embedding=embeddings[task]):
            return torch.nn.functional.mse_loss(model(x), targets[task])

    start = [loss(t).item() for t in (0, 1)]
    for _ in range(60):
        (loss(0) + loss(1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    end = [loss(t).item() for t in (0, 1)]
    assert all(e < 0.1 * s for s, e in zip(start, end)), f"per-task losses {start} -> {end}"


def test_generator_parameters_are_counted() -> None:
    case = CASES[0]  # Linear(12 -> 10), r=4: A has 48 entries, B 40
    model = _hyper(case, perturb=False)
    lora = 4 * (12 + 10)
    generator = (EMBEDDING_DIM + 1) * HIDDEN_DIM + HIDDEN_DIM * lora
    assert count_parameters(model).trainable == lora + generator


@pytest.mark.parametrize("field", ["embedding_dim", "hidden_dim"])
@pytest.mark.parametrize("value", [0, 1.5, False])
def test_sizes_are_validated(field, value) -> None:
    with pytest.raises(ValueError, match=f"variant_settings.{field} must be an integer >= 1"):
        LoraConfig(variant="hyper", variant_settings={field: value})


def test_pissa_is_refused() -> None:
    case = CASES[0]
    with pytest.raises(ValueError, match="init='pissa' means the PiSSA variant, which cannot be combined with variant 'hyper'"):
        attach(case.build(), _config(case).replace(init="pissa"))
