"""FSDP2 under torchrun, end to end on the CPU (gloo): two processes, each holding half of every block of
the story GPT-2, train what one process trains, save the whole PEFT adapter, and resume a sharded
checkpoint exactly -- with as many processes as wrote it, and only then.

Each torchrun start costs seconds on a 2-core machine, so the runs are module fixtures shared by the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_studio.core.disk.resource_files import demo_file
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.run_config import RunConfig
from lora_studio.core.training.fsdp import fsdp_problem

PYTHON = sys.executable
RUN_TOML = """
[model]
source = "demo"
name = "story"

[data]
kind = "causal-lm"
train = "{train}"
validation_split = 0.1
max_length = 32

[lora]
r = 4
alpha = 8
targets = ["c_attn", "c_proj", "c_fc"]
variant = "{variant}"

[training]
mode = "{mode}"
max_steps = 4
batch_size = 4
grad_accumulation = 2
lr = 0.001
warmup_steps = 1
eval_every = 2
eval_batch_size = 8
checkpoint_every = 2
keep_checkpoints = 5
log_every = 1
device = "cpu"
distributed = "fsdp"

[output]
dir = "{out}"
tensorboard = false

[samples]
prompts = ["Once upon a time"]
max_new_tokens = 4
count = 1
"""
# Two processes sum half of each micro-batch each, then FSDP's reduce-scatter averages; one process sums
# it whole.  The summation order differs, and Adam's m/sqrt(v) amplifies that for near-zero gradients:
# measured about 1.5e-6 on the factors at lr 1e-3 (FSDP and DDP agree with each other to 2e-8).
FACTOR_ATOL = 1e-5
NORM_RTOL = 1e-3  # each layer's ‖s·BA‖ at an evaluation: the factors' FACTOR_ATOL over norms of about 0.05
LOSS_RTOL = 1e-5  # per-step training and validation losses (measured: about 1e-7 relative)
# Full fine-tuning moves every weight, near-zero gradients included, where Adam turns rounding into steps
# of up to lr: measured ‖W_fsdp - W_one‖ = 2.8e-4 of the update ‖W_one - W_base‖, and DDP's own 2.9e-4.
FULL_RELATIVE = 1e-3


def _run(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    launch = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launch, "-m", "lora_studio.core"] if processes > 1 else [PYTHON, "-m", "lora_studio.core"]
    return subprocess.run([*command, *args, "--quiet"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def _write(tmp: Path, name: str, mode: str = "lora", variant: str = "lora") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(RUN_TOML.format(train=demo_file("story/pirate.txt"), out=tmp / name, mode=mode, variant=variant))
    return path


def _train(tmp: Path, name: str, processes: int, **kinds: str) -> Path:
    done = _run("train", str(_write(tmp, name, **kinds)), processes=processes)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished: 4/4 steps") == 1, "only rank 0 reports"
    return tmp / name


def _events(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["event"] == kind]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run_dir / "adapter" / "adapter_model.safetensors")


def _assert_close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], atol: float) -> None:
    assert set(expected) == set(actual)
    for key in expected:
        difference = float((expected[key] - actual[key]).abs().max())
        assert torch.allclose(expected[key], actual[key], atol=atol, rtol=0), (key, difference)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("one"), "run", processes=1)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("fsdp"), "run", processes=2)


def test_two_sharded_processes_train_what_one_trains(one, fsdp) -> None:
    for kind in ("StepMetrics", "EvalMetrics"):
        expected, actual = _events(one, kind), _events(fsdp, kind)
        assert [e["step"] for e in expected] == [a["step"] for a in actual]
        for e, a in zip(expected, actual, strict=True):
            assert a["loss"] == pytest.approx(e["loss"], rel=LOSS_RTOL), (kind, e["step"])
    grad_norms = [(e["grad_norm"], a["grad_norm"]) for e, a in zip(_events(one, "StepMetrics"),
                                                                    _events(fsdp, "StepMetrics"), strict=True)]
    for expected, actual in grad_norms:  # clip_grad_norm_ over DTensor gradients: the whole model's norm
        assert actual == pytest.approx(expected, rel=LOSS_RTOL)
    for e, a in zip(_events(one, "EvalMetrics"), _events(fsdp, "EvalMetrics"), strict=True):  # read off DTensors
        assert a["layer_update_norms"] == pytest.approx(e["layer_update_norms"], rel=NORM_RTOL), e["step"]
    # every process generated the samples in step (each forward gathers shards); rank 0 reported them once
    assert [s["items"] for s in _events(one, "Samples")] == [s["items"] for s in _events(fsdp, "Samples")]
    assert len(_events(fsdp, "Samples")) == 2
    _assert_close(_adapter(one), _adapter(fsdp), FACTOR_ATOL)
    shards = sorted(p.name for p in (fsdp / "checkpoints" / "step-00000004").iterdir())
    assert shards == ["model.safetensors", "optimizer-rank0-of-2.safetensors", "optimizer-rank1-of-2.safetensors",
                      "rng-rank0-of-2.safetensors", "rng-rank1-of-2.safetensors", "state.json"]


def test_the_final_adapter_is_the_whole_peft_adapter(one, fsdp) -> None:
    from lora_studio.core.training.trained_run import load_for_inference

    for name in ("adapter_config.json", "lora_studio_adapter.json"):
        expected = json.loads((one / "adapter" / name).read_text())
        actual = json.loads((fsdp / "adapter" / name).read_text())
        expected.get("run_summary", {}).pop("best_loss", None)
        actual.get("run_summary", {}).pop("best_loss", None)
        assert actual == expected, name  # the base's class and fingerprint too: not FSDP's wrapper class
    ids = torch.arange(12).reshape(1, 12)
    outputs = []
    for folder in (one / "adapter", fsdp / "adapter", fsdp / "best", fsdp):  # the run folder reads its checkpoint
        model = load_for_inference(folder).model.eval()
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    for logits in outputs[1:]:
        assert torch.allclose(outputs[0], logits, atol=1e-4, rtol=0)


def test_a_sharded_checkpoint_resumes_exactly_with_its_process_count_only(fsdp, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fsdp, run)
    (run / "run.toml").write_text((run / "run.toml").read_text().replace(str(fsdp), str(run)))
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # as if killed after the step-2 checkpoint
    refused = _run("resume", str(run), processes=1)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "sharded FSDP checkpoint written by 2 processes" in refused.stderr
    assert "training.processes = 2" in refused.stderr
    done = _run("resume", str(run), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_close(_adapter(fsdp), _adapter(run), atol=0.0)  # bit for bit the uninterrupted run


def test_full_fine_tuning_shards_too(tmp_path) -> None:
    run = _train(tmp_path, "full", processes=2, mode="full")
    one = _train(tmp_path, "full-one", processes=1, mode="full")
    for e, a in zip(_events(one, "StepMetrics"), _events(run, "StepMetrics"), strict=True):
        assert a["loss"] == pytest.approx(e["loss"], rel=LOSS_RTOL), e["step"]
    whole = "adapter/model.safetensors"  # every weight, gathered whole onto rank 0
    expected, actual = load_safetensors(one / whole), load_safetensors(run / whole)
    assert set(expected) == set(actual)
    base = load_safetensors(demo_file("story/model.safetensors"))
    moved = [k for k in expected if k in base]  # the tied head is the embedding
    difference = sum(float((expected[k] - actual[k]).double().pow(2).sum()) for k in expected) ** 0.5
    update = sum(float((expected[k] - base[k].to(expected[k].dtype)).double().pow(2).sum()) for k in moved) ** 0.5
    assert difference < FULL_RELATIVE * update, (difference, update)


def test_what_fsdp_cannot_train_is_refused_by_name() -> None:
    base = RunConfig.from_toml(RUN_TOML.format(train="x.txt", out="out", mode="lora", variant="lora"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert fsdp_problem(base, cpu) is None
    for variant in ("adalora", "pruning", "sparse"):
        problem = fsdp_problem(base.replace(lora=base.lora.replace(variant=variant)), cpu)
        assert problem and "training.distributed = 'fsdp'" in problem and "'ddp'" in problem, variant
    half = base.replace(training=dataclasses.replace(base.training, precision="float16"))
    assert fsdp_problem(half, cpu) is None  # trains in float32 on a CPU: no loss scaler
    assert "training.precision = 'bfloat16'" in fsdp_problem(half, cuda)
    eight_bit = base.replace(training=dataclasses.replace(base.training, optimizer="adamw_8bit"))
    assert "training.optimizer = 'adamw'" in fsdp_problem(eight_bit, cuda)
