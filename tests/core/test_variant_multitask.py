"""Multi-task LoRA: per-sample routing to task banks, merging one task, clear errors for bad task ids.

Tolerance: TOL (float32) for outputs that must be equal; convolution cases use the case's own tolerance.
"""

import pytest
import torch
from tiny_models import LAYER_CASES, perturb_adapters, run

from lora_studio.core import (
    LoraConfig,
    adapter_layers,
    attach,
    disable_adapters,
    load_adapter,
    merge,
    save_adapter,
    unmerge,
    variant_inputs,
)
from lora_studio.core.variants.conditioned import MissingVariantInputError

TOL = 1e-6
NUM_TASKS = 3
CASES = [c for c in LAYER_CASES if c.name in ("linear", "conv2d_strided_dilated", "embedding", "gpt2_conv1d")]


def _config(case, **settings) -> LoraConfig:
    return LoraConfig(r=4, alpha=8, targets=case.targets, variant="multitask",
                      variant_settings={"num_tasks": NUM_TASKS, **settings})


def _mixed_ids(batch: int) -> torch.Tensor:
    return torch.tensor([2, 0, 1, 2, 0, 1])[:batch]


def _batch(case) -> int:
    x = case.make_input()
    return (x[0] if isinstance(x, tuple) else x).shape[0]


def _output(model, case, **inputs) -> torch.Tensor:
    with torch.no_grad(), variant_inputs(model, **inputs):
        return run(model, case.make_input())


def _single_task_model(case, multi, task: int):
    """A plain-LoRA model holding only task ``task``'s bank of ``multi``."""
    torch.manual_seed(0)
    plain = attach(case.build(), LoraConfig(r=4, alpha=8, targets=case.targets))
    banks = dict(adapter_layers(multi))
    with torch.no_grad():
        for name, layer in adapter_layers(plain):
            a_stack, b_stack = banks[name].stored_factors("default", "weight")
            a, b = layer.stored_factors("default", "weight")
            a.copy_(a_stack[task])
            b.copy_(b_stack[task])
    return plain


@pytest.fixture
def trained():
    """Every case's model with perturbed (so distinct) task banks."""
    def make(case):
        torch.manual_seed(0)
        model = attach(case.build(), _config(case))
        perturb_adapters(model)
        return model
    return make


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_sample_gets_its_own_tasks_update(case, trained) -> None:
    model = trained(case)
    ids = _mixed_ids(_batch(case))
    routed = _output(model, case, task_ids=ids)
    for task in range(NUM_TASKS):
        rows = ids == task
        if rows.any():
            alone = _output(_single_task_model(case, model, task), case)
            torch.testing.assert_close(routed[rows], alone[rows], atol=max(TOL, case.tolerance), rtol=0)
    uniform = [_output(model, case, task_ids=torch.full_like(ids, t)) for t in range(NUM_TASKS)]
    assert (uniform[0] - uniform[1]).abs().max() > 1e-3, "distinct banks give distinct outputs"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_merging_task_k_equals_every_sample_on_task_k(case, trained) -> None:
    model = trained(case)
    with disable_adapters(model):
        base = _output(model, case)
    batch = _batch(case)
    tol = max(TOL, case.tolerance)
    for task in range(NUM_TASKS):
        expected = _output(model, case, task_ids=torch.full((batch,), task))
        merge(model, task_id=task)
        torch.testing.assert_close(_output(model, case), expected, atol=tol, rtol=0)  # no task ids needed now
        unmerge(model)
        with disable_adapters(model):
            torch.testing.assert_close(_output(model, case), base, atol=tol, rtol=0)


def test_one_int_routes_the_whole_batch() -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    perturb_adapters(model)
    batch = _batch(case)
    every_sample = torch.ones(batch, dtype=torch.long)
    one_int = _output(model, case, task_ids=1)
    torch.testing.assert_close(one_int, _output(model, case, task_ids=every_sample), atol=0, rtol=0)


def test_a_task_trains_only_its_own_bank() -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    perturb_adapters(model)
    with variant_inputs(model, task_ids=torch.tensor([1, 1, 1, 1])):
        run(model, case.make_input()).square().sum().backward()
    for _, layer in adapter_layers(model):
        for grad in (p.grad for p in layer.adapter_parameters("default")):
            assert grad[1].abs().sum() > 0, "task 1's bank receives a gradient"
            assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0, "other banks are untouched"


def test_two_tasks_learn_two_different_targets() -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x = torch.randn(64, 8)
    ids = torch.arange(64) % 2
    with torch.no_grad():
        y = base(x) + torch.where(ids[:, None] == 0, 1.0, -1.0)  # opposite shifts: one bank cannot fit both
    model = attach(base, LoraConfig(r=4, alpha=8, targets=["0", "2"], variant="multitask"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def task_losses() -> torch.Tensor:
        err = (model(x) - y).square().mean(dim=1)
        return torch.stack([err[ids == t].mean() for t in (0, 1)])

    with variant_inputs(model, task_ids=ids):
        start = task_losses().detach()
        for _ in range(60):
            task_losses().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        end = task_losses().detach()
    assert (end < 0.1 * start).all(), f"per-task losses {start.tolist()} -> {end.tolist()}"


def test_missing_task_ids_name_the_input_and_how_to_pass_it() -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    with pytest.raises(MissingVariantInputError, match=r"task_ids.*variant_inputs\(model, task_ids="):
        run(model, case.make_input())
    with pytest.raises(MissingVariantInputError, match=r"merge\(model, task_id=k\)"):
        merge(model)


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([0, 1, 3, 0]), r"task_ids holds 3, out of range.*num_tasks=3.*0\.\.2"),
    (torch.tensor([0, -1, 0, 0]), r"task_ids holds -1, out of range"),
    (torch.tensor([0.0, 1.0, 0.0, 1.0]), r"integer task ids.*float32"),
    (torch.tensor([0, 1]), r"task_ids has shape \(2,\).*batch\) dimension is 4"),
])  # fmt: skip
def test_bad_task_ids_are_refused_clearly(ids, message) -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    with pytest.raises(ValueError, match=message), variant_inputs(model, task_ids=ids):
        run(model, case.make_input())


def test_merging_an_unknown_task_is_refused_and_changes_nothing() -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    perturb_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"task_id 3 is out of range"):
        merge(model, task_id=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(layer.merged for _, layer in adapter_layers(model))


def test_disable_adapters_keeps_the_merged_task() -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    perturb_adapters(model)
    merge(model, task_id=2)
    merged = _output(model, case)
    with disable_adapters(model):
        pass  # unmerges inside, re-merges on leaving -- with no task id given
    torch.testing.assert_close(_output(model, case), merged, atol=TOL, rtol=0)


def test_weight_space_layers_are_refused() -> None:
    mha = next(c for c in LAYER_CASES if c.name == "multihead_attention")
    with pytest.raises(ValueError, match="cannot adapt layer 'attn'.*cannot be routed"):
        attach(mha.build(), _config(mha))


def test_pissa_is_refused_and_the_model_left_alone() -> None:
    case = CASES[0]
    model = case.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="init='pissa' means the PiSSA variant, which cannot be combined with variant 'multitask'"):
        attach(model, _config(case).replace(init="pissa"))
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_banks_are_stacked_and_counted_per_task() -> None:
    case = CASES[0]  # Linear(12 -> 10), r=4
    model = attach(case.build(), _config(case))
    (_, layer), = adapter_layers(model)
    shapes = sorted(tuple(p.shape) for p in layer.adapter_parameters("default"))
    assert shapes == [(NUM_TASKS, 4, 12), (NUM_TASKS, 10, 4)]


def test_round_trip_keeps_every_bank(tmp_path) -> None:
    case = CASES[0]
    model = attach(case.build(), _config(case))
    perturb_adapters(model)
    with pytest.warns(UserWarning, match="only LoRA Studio loads it"):
        save_adapter(model, tmp_path)
    fresh = load_adapter(case.build(), tmp_path)
    ids = _mixed_ids(_batch(case))
    torch.testing.assert_close(_output(fresh, case, task_ids=ids), _output(model, case, task_ids=ids),
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_num_tasks_is_validated(value) -> None:
    with pytest.raises(ValueError, match="variant_settings.num_tasks must be an integer >= 1"):
        LoraConfig(variant="multitask", variant_settings={"num_tasks": value})


def test_example_inputs_cover_every_default_task() -> None:
    from lora_studio.core import get_variant

    ids = get_variant("multitask").example_inputs(8)["task_ids"]
    assert ids.dtype == torch.long and set(ids.tolist()) == {0, 1}
