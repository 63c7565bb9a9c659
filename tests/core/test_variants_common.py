"""Every registered variant, driven from available_variants() so new ones are covered automatically.

For each variant and each tiny model whose layers it supports: it attaches; a fresh adapter
is the identity where its paper says so; merged equals unmerged (or merge raises the
documented error); unmerge restores the base output; a short regression run lowers the
loss clearly; saving and loading round-trips.  Tolerances: IDENTITY_TOL for a fresh adapter,
each case's ``tolerance`` for merged vs unmerged (1e-5 float32, 1e-4 with convolutions),
ROUND_TRIP_TOL after save and load, and the loss must fall below LOSS_RATIO of its start.
"""

import copy

import pytest
import torch
from tiny_models import ALL_CASES, Case, run
from variant_runs import train

from lora_studio.core import (
    LoraConfig,
    MergeNotSupportedError,
    adapter_layers,
    attach,
    available_variants,
    disable_adapters,
    load_adapter,
    merge,
    save_adapter,
    unmerge,
    variant_inputs,
)
from lora_studio.core.adapter.target_matching import preview_targets
from lora_studio.core.layers import wrapper_for

IDENTITY_TOL = 1e-6
ROUND_TRIP_TOL = 1e-6
LOSS_RATIO = 0.5
VARIANTS = available_variants()


def _config(variant, case: Case, **changes) -> LoraConfig:
    return LoraConfig(r=4, alpha=8, targets=case.targets, modules_to_save=case.modules_to_save,
                      variant=variant.name, **changes)


def _unsupported(variant, case: Case) -> str | None:
    """The variant's reason to refuse one of the case's layers, if any."""
    model = case.build()
    for name in preview_targets(model, _config(variant, case)).matched:
        layer = model.get_submodule(name)
        reason = variant.unsupported_reason(wrapper_for(layer)[0](layer))
        if reason:
            return f"{variant.name} cannot adapt {type(layer).__name__}: {reason}"
    return None


def _perturb(model: torch.nn.Module, std: float = 0.1, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for adapter in layer.adapter_names:
                for p in layer.adapter_parameters(adapter):
                    p.add_(torch.randn(p.shape, generator=g) * std)


def _run(model: torch.nn.Module, case: Case, inputs: dict) -> torch.Tensor:
    with torch.no_grad(), variant_inputs(model, **inputs):
        return run(model, case.make_input())


def _batch_size(case: Case) -> int:
    x = case.make_input()
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, tuple) else x
    return first.shape[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_registry_entry_is_complete(variant) -> None:
    assert variant.title and variant.paper and len(variant.description) > 80
    assert variant.can_merge or variant.merge_note, "a variant that cannot merge says why"
    linear = wrapper_for(torch.nn.Linear(4, 4))[0](torch.nn.Linear(4, 4))
    assert variant.unsupported_reason(linear) is None, "every variant adapts nn.Linear"
    for field in variant.settings_fields():
        assert field.help, f"setting {field.name} needs a help note"
    LoraConfig(variant=variant.name)  # its default settings validate


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_identity_merge_unmerge(variant, case: Case) -> None:
    reason = _unsupported(variant, case)
    if reason:
        with pytest.raises(ValueError, match="cannot adapt layer"):
            attach(case.build(), _config(variant, case))
        pytest.skip(reason)
    torch.manual_seed(0)
    model = attach(case.build(), _config(variant, case))
    inputs = variant.example_inputs(_batch_size(case))
    with disable_adapters(model):
        base_out = _run(model, case, inputs)
    if variant.starts_as_identity:
        torch.testing.assert_close(_run(model, case, inputs), base_out, atol=IDENTITY_TOL, rtol=0)
    _perturb(model)
    merge_kwargs, merge_inputs = variant.merge_example(_batch_size(case))
    unmerged = _run(model, case, merge_inputs)
    assert (unmerged - base_out).abs().max() > 100 * case.tolerance, "the perturbed adapter changes the output"
    if not variant.can_merge:
        with pytest.raises(MergeNotSupportedError):
            merge(model)
        return
    merge(model, **merge_kwargs)
    torch.testing.assert_close(_run(model, case, merge_inputs), unmerged, atol=case.tolerance, rtol=0)
    unmerge(model)
    with disable_adapters(model):
        torch.testing.assert_close(_run(model, case, inputs), base_out, atol=case.tolerance, rtol=0)
    torch.testing.assert_close(_run(model, case, merge_inputs), unmerged, atol=case.tolerance, rtol=0)


def _regression_problem():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    teacher = copy.deepcopy(base)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (teacher[0], teacher[2]):  # the target differs from the base by a low-rank update
            out_f, in_f = layer.weight.shape
            layer.weight.add_(0.5 * torch.randn(out_f, 2, generator=g) @ torch.randn(2, in_f, generator=g) / 2)
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        y = teacher(x)
    return base, x, y


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_short_run_lowers_loss(variant) -> None:
    base, x, y = _regression_problem()
    model = attach(base, LoraConfig(r=4, alpha=8, targets=["0", "2"], variant=variant.name))
    with variant_inputs(model, **variant.example_inputs(x.shape[0])):
        losses = train(model, x, y, steps=120)
    assert losses[-1] < LOSS_RATIO * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_save_and_load_round_trip(variant, tmp_path) -> None:
    base, x, _ = _regression_problem()
    config = LoraConfig(r=4, alpha=8, targets=["0", "2"], variant=variant.name)
    torch.manual_seed(1)
    model = attach(copy.deepcopy(base), config)
    _perturb(model)
    save_adapter(model, tmp_path)
    torch.manual_seed(2)  # the fresh adapter starts from other random values
    fresh = load_adapter(copy.deepcopy(base), tmp_path)
    inputs = variant.example_inputs(x.shape[0])
    with torch.no_grad(), variant_inputs(model, **inputs):
        expected = model(x)
    with torch.no_grad(), variant_inputs(fresh, **inputs):
        actual = fresh(x)
    torch.testing.assert_close(actual, expected, atol=ROUND_TRIP_TOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_describe_predicts_what_attach_adds(variant) -> None:
    from lora_studio.core import count_parameters, describe

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    config = LoraConfig(r=4, targets=["0", "2"], variant=variant.name)
    predicted = sum(node.added_parameters for node in describe(base, config).walk())
    model = attach(copy.deepcopy(base), config)
    assert predicted == count_parameters(model).adapter > 0


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.merge_inputs], ids=lambda v: v.name)
def test_merge_inputs_export_and_refusal(variant, tmp_path) -> None:
    from lora_studio.core import export_merged

    base, x, _ = _regression_problem()
    model = attach(copy.deepcopy(base), LoraConfig(r=4, targets=["0", "2"], variant=variant.name))
    _perturb(model)
    merge_kwargs, forward_inputs = variant.merge_example(x.shape[0])
    assert set(merge_kwargs) == set(variant.merge_inputs)
    result = export_merged(model, tmp_path / "m.safetensors", example_inputs=x, variant_inputs=merge_kwargs)
    assert result.max_output_difference < 1e-5
    merge(model, **merge_kwargs)
    # another task/embedding than the merged one: the previous task id, or the negated embedding
    other_kwargs = {k: (-v if isinstance(v, torch.Tensor) else int(v) - 1) for k, v in merge_kwargs.items()}
    with pytest.raises(ValueError, match="already merged"):
        merge(model, **other_kwargs)
