"""Per-layer update norms at each evaluation, and a run folder's trained model read back."""

from __future__ import annotations

import math

import torch
from run_configs import digits_run, with_training
from torch import nn

from lora_studio.core import EvalMetrics, LoraConfig, attach, layer_update_norms, load_trained_run, train
from lora_studio.core.disk.safe_loading import load_safetensors

TOLERANCE = 1e-5  # float32 sums of a few hundred squares


def test_norm_is_the_frobenius_norm_of_scaled_b_times_a() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    attach(model, LoraConfig(r=2, alpha=6, targets=["0", "2"]))
    for p in model.parameters():
        if p.requires_grad:
            nn.init.normal_(p)  # B starts at zero: give both factors values
    norms = layer_update_norms(model)
    assert sorted(norms) == ["0", "2"]
    for name in norms:
        layer = model.get_submodule(name)
        by_hand = (3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight).norm().item()
        assert math.isclose(norms[name], by_hand, rel_tol=TOLERANCE)


def test_every_evaluation_reports_norms_and_the_run_folder_gives_the_model_back(tmp_path) -> None:
    evals: list[EvalMetrics] = []
    config = with_training(digits_run(tmp_path), max_steps=4, eval_every=2, eval_at_start=True)
    result = train(config, lambda e: evals.append(e) if isinstance(e, EvalMetrics) else None)
    assert result.status == "finished"
    assert [e.step for e in evals] == [0, 2, 4]
    assert all(v == 0.0 for v in evals[0].layer_update_norms.values())  # B starts at zero
    assert sorted(evals[-1].layer_update_norms) == ["conv1", "conv2", "fc1"]
    assert all(v > 0 for v in evals[-1].layer_update_norms.values())
    trained = load_trained_run(tmp_path)
    again = layer_update_norms(trained.model)
    for name, value in evals[-1].layer_update_norms.items():
        assert math.isclose(again[name], value, rel_tol=TOLERANCE)


def test_full_fine_tuning_reports_no_norms_and_its_best_is_the_whole_model(tmp_path) -> None:
    evals: list[EvalMetrics] = []
    config = with_training(digits_run(tmp_path), max_steps=2, eval_every=2, mode="full", lr=1e-3)
    train(config, lambda e: evals.append(e) if isinstance(e, EvalMetrics) else None)
    assert evals and evals[-1].layer_update_norms is None
    assert isinstance(load_trained_run(tmp_path).model, nn.Module)
    best = load_trained_run(tmp_path, "best").model.state_dict()
    saved = load_safetensors(tmp_path / "best" / "model.safetensors")
    assert best.keys() == saved.keys() and all(torch.equal(best[k], saved[k]) for k in saved)
