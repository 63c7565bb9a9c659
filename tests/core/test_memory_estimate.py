"""The training-memory estimate's components behave as the quantities they stand for.

Sanity properties only (the estimate against measured peaks is bench/bench_memory_estimate.py):
a QLoRA base stores its targeted Linear weights in about 4.5 bits instead of 32; gradients and
optimizer states follow the trainable parameters alone; activations grow linearly with the
batch and with the sequence length; a model the meta trace cannot run still gets the formula.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_studio.core import BatchShape, LoraConfig, count_parameters, describe, estimate_training_memory


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0))


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(256, 512)
        self.act = nn.GELU()
        self.down = nn.Linear(512, 256)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(pixel_values.flatten(1))))


def test_qlora_base_is_about_eight_times_smaller_on_linear_weights() -> None:
    model = _Mlp()
    lora = LoraConfig(r=4, targets=["up", "down"])
    qlora = lora.replace(variant="qlora")
    float_weights = estimate_training_memory(model, lora).weights
    nf4_weights = estimate_training_memory(model, qlora).weights
    linear_bytes = 4 * (256 * 512 + 512 * 256)
    saved = float_weights - nf4_weights
    # 4 bits plus the block scales: between 1/8 and 1/6 of float32 per weight.
    assert linear_bytes * (1 - 1 / 6) <= saved <= linear_bytes * (1 - 1 / 8)
    assert estimate_training_memory(model, qlora).gradients == estimate_training_memory(model, lora).gradients


def test_gradients_and_optimizer_states_follow_trainable_parameters_only() -> None:
    model = _gpt2()
    small = estimate_training_memory(model, LoraConfig(r=4, targets=["c_attn"]))
    large = estimate_training_memory(model, LoraConfig(r=8, targets=["c_attn"]))
    tree = describe(model, LoraConfig(r=4, targets=["c_attn"]))
    added = sum(node.added_parameters for node in tree.walk())
    assert small.gradients == added * 4, "float32 gradients of the adapter's factors, nothing of the base"
    assert large.gradients == 2 * small.gradients, "rank 8 has twice the factors of rank 4"
    assert small.optimizer_states == 2 * small.gradients, "AdamW keeps two float32 moments"
    assert estimate_training_memory(model, LoraConfig(r=4, targets=["c_attn"]), optimizer="sgd").optimizer_states == 0
    assert small.weights == large.weights - (large.gradients - small.gradients), "the base is the same"
    assert count_parameters(model).total * 4 < small.weights + 1, "the base itself is counted once, as stored"


@pytest.mark.parametrize("grow", ["batch", "length"])
def test_activations_grow_linearly_with_batch_and_sequence_length(grow: str) -> None:
    model = _gpt2()
    lora = LoraConfig(r=4, targets=["c_attn", "c_proj"])

    def activations(n: int) -> int:
        shape = BatchShape(n, length=16) if grow == "batch" else BatchShape(2, length=8 * n)
        estimate = estimate_training_memory(model, lora, batch=shape)
        assert estimate.activation_method == "traced"
        return estimate.activations

    one, two, four = activations(1), activations(2), activations(4)
    if grow == "batch":
        assert two == pytest.approx(2 * one, rel=0.02)
        assert four == pytest.approx(4 * one, rel=0.02)
    else:  # attention probabilities grow with length² under attention dropout: a little faster than linear
        assert 2 * one <= two <= 2.2 * one
        assert 4 * one <= four <= 4.8 * one


def test_images_scale_with_pixels_and_precision_halves_activations() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=3)
    lora = LoraConfig(r=4, targets=["conv1", "conv2"], modules_to_save=["fc"])
    small = estimate_training_memory(model, lora, batch=BatchShape(2, image=(3, 64, 64)))
    large = estimate_training_memory(model, lora, batch=BatchShape(2, image=(3, 128, 128)))
    assert large.activations == pytest.approx(4 * small.activations, rel=0.05), "four times the pixels"
    half = estimate_training_memory(model, lora, batch=BatchShape(2, image=(3, 64, 64)), precision="bfloat16")
    assert half.activations < small.activations
    assert half.weights == small.weights, "mixed precision computes in bf16; the base stays as stored"


def test_an_untraceable_model_falls_back_to_the_formula() -> None:
    class NeedsValues(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            if float(pixel_values.sum()) > 0:  # reads a value: impossible on the meta device
                return self.proj(pixel_values.flatten(1))
            return pixel_values.flatten(1)

    estimate = estimate_training_memory(NeedsValues(), LoraConfig(r=2, targets=["proj"]),
                                        batch=BatchShape(4, image=(2, 2, 2)))
    assert estimate.activation_method == "formula" and estimate.activations == 4 * 4 * 8 * 4
    with pytest.raises(ValueError, match="exactly one"):
        BatchShape(4)
