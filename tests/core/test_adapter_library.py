"""Several adapters on one model as a library: switching, renaming, reading a folder's facts without a
model, and a folder for another base refused before anything on the model changes."""

from __future__ import annotations

import json

import pytest
import torch
from io_models import CONV_NET, IOCase, call, perturb, pretrained
from torch import nn

from lora_studio.core import (
    AdapterMismatchError,
    LoraConfig,
    active_adapter,
    attach,
    check_adapter_fit,
    disable_adapters,
    get_adapter_config,
    list_adapters,
    load_adapter,
    read_adapter_facts,
    rename_adapter,
    save_adapter,
    set_active_adapter,
    set_adapter,
)

TOL = 1e-6
CASE = IOCase("conv_net", CONV_NET.make, CONV_NET.inputs, ["conv1", "conv2", "classifier"])
TASKS = ("sentiment", "topic", "language-x")


def _single(name: str, seed: int, r: int = 4) -> nn.Module:
    """The base with one adapter ``name`` of random factors: the reference for that adapter's output."""
    model = pretrained(CASE)
    attach(model, LoraConfig(r=r, alpha=2 * r, targets=CASE.targets), adapter_name=name)
    perturb(model, seed=seed)
    return model


def _library(tmp_path) -> nn.Module:
    """One base, the three task adapters loaded from their folders."""
    model = pretrained(CASE)
    for i, name in enumerate(TASKS):
        save_adapter(_single(name, seed=10 + i), tmp_path, name)
        load_adapter(model, tmp_path, adapter_name=name)
    return model


def test_switching_runs_each_adapter_on_its_own(tmp_path):
    model = _library(tmp_path)
    x = CASE.inputs()
    assert list_adapters(model) == list(TASKS)
    outputs = {}
    for i, name in enumerate(TASKS):
        set_adapter(model, name)  # PEFT's name
        assert active_adapter(model) == name
        outputs[name] = call(model, x)
        torch.testing.assert_close(outputs[name], call(_single(name, seed=10 + i), x), atol=TOL, rtol=0)
    assert (outputs["sentiment"] - outputs["topic"]).abs().max() > 1e-3, "the adapters really differ"
    set_active_adapter(model, "topic")  # the studio's name, kept
    torch.testing.assert_close(call(model, x), outputs["topic"], atol=TOL, rtol=0)
    with disable_adapters(model):
        torch.testing.assert_close(call(model, x), call(pretrained(CASE), x), atol=TOL, rtol=0)


def test_rename_keeps_outputs_order_and_parameters(tmp_path):
    model = _library(tmp_path)
    x = CASE.inputs()
    set_adapter(model, "topic")
    before = call(model, x)
    params_before = {id(p) for p in model.parameters()}
    rename_adapter(model, "topic", "news")
    assert list_adapters(model) == ["sentiment", "news", "language-x"]
    assert active_adapter(model) == "news"
    assert {id(p) for p in model.parameters()} == params_before, "the same tensors, an optimizer keeps them"
    torch.testing.assert_close(call(model, x), before, atol=0, rtol=0)
    assert get_adapter_config(model, "news").r == 4
    set_adapter(model, "sentiment")
    set_adapter(model, "news")
    torch.testing.assert_close(call(model, x), before, atol=0, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".news" in n for n in trainable)
    save_adapter(model, tmp_path / "renamed", "news")  # saved under its new name
    assert read_adapter_facts(tmp_path / "renamed" / "news").name == "news"
    with pytest.raises(ValueError, match="already exists"):
        rename_adapter(model, "news", "sentiment")
    with pytest.raises(ValueError, match="letters, digits"):
        rename_adapter(model, "news", "a.b")
    with pytest.raises(ValueError, match="no adapter named"):
        rename_adapter(model, "topic", "x")
    assert list_adapters(model) == ["sentiment", "news", "language-x"]


class WiderNet(nn.Module):
    """CONV_NET's layer names with other sizes: the adapter's modules exist, its shapes do not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 7, 3, padding=1)
        self.conv2 = nn.Conv2d(7, 8, 3, stride=2, padding=1)
        self.classifier = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.classifier(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [type(m).__name__ for m in model.modules()],
        list_adapters(model),
        active_adapter(model),
    )


@pytest.mark.parametrize("other", ["wider", "other_names"])
def test_an_adapter_for_another_base_is_refused_and_the_model_unchanged(other, tmp_path):
    folder = save_adapter(_single("task", seed=3), tmp_path, "task")
    torch.manual_seed(0)
    model = WiderNet() if other == "wider" else nn.Sequential(nn.Linear(4, 4))
    attach(model, LoraConfig(r=2, targets=["conv2"] if other == "wider" else ["0"]), adapter_name="mine")
    set_active_adapter(model, "mine")
    before = _snapshot(model)
    fit = check_adapter_fit(model, folder)
    assert not fit.fits and ("does not match model shape" in fit.problem or "has no module" in fit.problem)
    assert _snapshot(model)[0].keys() == before[0].keys()
    with pytest.raises(AdapterMismatchError, match="another base model"):
        load_adapter(model, folder, adapter_name="task")
    state, grads, types, adapters, active = before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert [type(m).__name__ for m in model.modules()] == types
    assert list_adapters(model) == adapters and active_adapter(model) == active


def test_fit_on_the_right_base_and_a_note_for_other_weights(tmp_path):
    model = pretrained(CASE)
    attach(model, LoraConfig(r=2, targets=["conv2"]), adapter_name="task")  # the fingerprint reads the others
    folder = save_adapter(model, tmp_path, "task")
    fit = check_adapter_fit(pretrained(CASE), folder)
    assert fit.fits and fit.note is None
    torch.manual_seed(99)
    retrained = CASE.make()  # same architecture, other weights
    fit = check_adapter_fit(retrained, folder)
    assert fit.fits and "different weights" in fit.note
    assert "no adapter_config.json" in check_adapter_fit(retrained, tmp_path / "nothing").problem


def test_facts_of_our_folder_and_of_a_peft_folder(tmp_path):
    model = _single("task", seed=3, r=4)
    ours = save_adapter(model, tmp_path / "run", "task", run_summary={"step": 12, "best_loss": 0.5},
                        base_model_name_or_path="demo:digits")  # fmt: skip
    (tmp_path / "run" / "run.toml").write_text("")  # the folder an adapter of a run sits in
    facts = read_adapter_facts(ours)
    assert (facts.name, facts.variant, facts.peft_type, facts.rank, facts.alpha) == ("task", "lora", "LORA", 4, 8.0)
    assert set(facts.targets) == {"conv1", "conv2", "classifier"}
    assert facts.ours and facts.run_summary["step"] == 12 and facts.run_dir == tmp_path / "run"
    assert facts.base_model_name_or_path == "demo:digits"
    assert facts.size_bytes == (ours / "adapter_model.safetensors").stat().st_size
    assert facts.parameters == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    json.dumps(facts.to_dict())  # plain data for --json

    peft = pytest.importorskip("peft")
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_model = get_peft_model(pretrained(CASE), PeftLoraConfig(r=2, lora_alpha=3, target_modules=["conv2"],
                                                                 use_dora=True))  # fmt: skip
    peft_model.save_pretrained(str(tmp_path / "peft_dora"))
    facts = read_adapter_facts(tmp_path / "peft_dora")
    assert (facts.name, facts.variant, facts.rank, facts.alpha, facts.targets) == ("peft_dora", "dora", 2, 3.0,
                                                                                   ("conv2",))  # fmt: skip
    assert not facts.ours and facts.run_dir is None and facts.ranks == {"conv2": 2}
    assert peft.__version__
