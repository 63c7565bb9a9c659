"""Training modes and settings: gradient accumulation, full fine-tuning, the text demo, causal LM."""

import torch
from run_configs import digits_run, final_tensors, with_training

from lora_studio.core.demo import run_demo
from lora_studio.core.training import train

# Accumulating 4 micro-batches sums the same per-example gradients in another order.
ACCUMULATION_TOLERANCE = 1e-5


def test_gradient_accumulation_matches_one_big_batch(tmp_path) -> None:
    whole = digits_run(tmp_path / "whole", max_steps=4)
    assert train(whole).status == "finished"
    assert train(with_training(whole.replace(output=whole.output.__class__(dir=str(tmp_path / "acc"),
                                                                           tensorboard=False)),
                               grad_accumulation=4)).status == "finished"
    a, b = final_tensors(tmp_path / "whole"), final_tensors(tmp_path / "acc")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=ACCUMULATION_TOLERANCE, rtol=0), key


def test_full_fine_tuning_trains_every_weight(tmp_path) -> None:
    config = with_training(digits_run(tmp_path, max_steps=3), mode="full")
    result = train(config)
    assert result.status == "finished" and result.trainable_parameters == result.total_parameters
    weights = final_tensors(tmp_path)
    assert "conv1.weight" in weights and not any("lora_" in k for k in weights)
    assert (tmp_path / "adapter" / "model.safetensors").is_file()


def test_text_demo_validation_loss_falls(tmp_path) -> None:
    outcome = run_demo("text", output_dir=tmp_path, steps=16)
    before, after = outcome["before"]["loss"], outcome["after"]["loss"]
    print(f"text demo validation loss {before:.3f} -> {after:.3f}")
    assert after < before * 0.9
