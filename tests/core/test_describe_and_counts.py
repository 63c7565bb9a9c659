"""describe() and the counts: consistent with the model, predictive before attach, fine on meta."""

import copy
import time
from pathlib import Path

import pytest
import torch
from tiny_models import MODEL_CASES

from lora_studio.core import LoraConfig, attach, count_parameters, describe, estimate_training_memory

# Llama-2-7B's published parameter count (Touvron et al. 2023, with untied 32000-token embeddings).
LLAMA2_7B_PARAMETERS = 6_738_415_616


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read memory use")
def test_describe_7b_on_meta_allocates_nothing() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    lora = LoraConfig(r=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    rss_before = _rss_bytes()
    start = time.perf_counter()
    tree = describe(model, lora)
    counts = count_parameters(model)
    elapsed = time.perf_counter() - start
    grown = _rss_bytes() - rss_before
    assert counts.total == LLAMA2_7B_PARAMETERS == tree.total_parameters
    assert all(p.is_meta for p in model.parameters())
    assert grown < 50 * 2**20, f"describe grew the process by {grown / 2**20:.0f} MB"
    # A hang guard, not a performance measurement (bench/ measures that): the figure is well under 1 s.
    assert elapsed < 10, f"describe took {elapsed:.1f} s"
    targeted = [n for n in tree.walk() if n.targeted]
    assert len(targeted) == 32 * 4
    assert sum(n.added_parameters for n in targeted) == 32 * 4 * 16 * (4096 + 4096)


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_describe_predicts_what_attach_adds(case) -> None:
    model = case.build()
    config = LoraConfig(r=3, targets=case.targets)
    tree = describe(model, config)
    predicted = sum(n.added_parameters for n in tree.walk())
    assert tree.total_parameters == count_parameters(model).total
    attach(model, config)
    counts = count_parameters(model)
    assert counts.adapter == predicted > 0
    after = describe(model)
    assert after.total_parameters == counts.base, "the tree shows the base model, adapters listed per layer"
    assert {n.name for n in after.walk() if n.adapters} == {n.name for n in tree.walk() if n.targeted}


def test_tree_totals_add_up_and_reasons_are_given() -> None:
    model = MODEL_CASES[3].build()  # resnet
    tree = describe(model)
    for node in tree.walk():
        assert node.total_parameters == node.own_parameters + sum(c.total_parameters for c in node.children)
        assert node.can_wrap == (node.reason is None)
    assert tree.find("layer1.0.bn1").reason.startswith("BatchNorm2d has no LoRA form")
    assert tree.find("layer1.0.conv1").can_wrap


def test_memory_estimate_before_attach_matches_after() -> None:
    case = MODEL_CASES[0]  # bert
    model = case.build()
    config = LoraConfig(r=8, targets=case.targets)
    planned = estimate_training_memory(model, config, precision="bfloat16", tokens_per_step=16 * 128)
    attach(model, config)
    actual = estimate_training_memory(model, precision="bfloat16", tokens_per_step=16 * 128)
    assert planned == actual
    counts = count_parameters(model)
    assert actual.gradients == counts.trainable * 4
    full_precision = estimate_training_memory(model, precision="float32", tokens_per_step=16 * 128)
    assert full_precision.weights == actual.weights, "weights are counted as stored; precision is the compute's"
    assert full_precision.activations == 2 * actual.activations, "bf16 halves the activations"
    assert estimate_training_memory(model).activations == 0, "no token count: no activation term"
    with pytest.raises(ValueError, match="precision"):
        estimate_training_memory(model, precision="float8")


def test_counts_dedupe_tied_weights() -> None:
    model = copy.deepcopy(MODEL_CASES[1].build())  # gpt2: lm_head shares wte's weight
    expected = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert count_parameters(model).total == expected == describe(model).total_parameters
