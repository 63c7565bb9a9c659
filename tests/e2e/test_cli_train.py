"""The CLI end to end: train, resume, inspect, export, exit codes, and a 2-process torchrun run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_studio.core.disk.safe_loading import load_safetensors

BIN = Path(sys.executable).parent
RUN_TOML = """
[model]
source = "demo"
name = "digits"

[data]
kind = "digits"
shift = "rotate"
max_samples = 128

[lora]
r = 4
alpha = 8
targets = ["conv1", "conv2", "fc1"]

[training]
max_steps = {steps}
batch_size = 16
lr = 0.01
eval_every = 0
checkpoint_every = 3
keep_checkpoints = 5
device = "cpu"

[output]
dir = "{out}"
tensorboard = false
"""
# Two processes each sum half of the batch, then DDP averages; one process sums it whole.
# Float addition order differs, Adam then normalises by sqrt(v): differences stay near float32
# rounding of the weights (about 1e-7 relative), far below this.
DDP_TOLERANCE = 1e-5


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lora-studio"), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def _write(tmp_path: Path, name: str, steps: int = 6) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(RUN_TOML.format(steps=steps, out=tmp_path / name))
    return path


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_safetensors(newest / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    done = _cli("train", str(_write(tmp, "run")), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "finished: 6/6 steps" in done.stdout
    return tmp / "run"


def test_train_writes_a_complete_run_folder(single) -> None:
    for name in ("run.toml", "metrics.jsonl", "result.json", "adapter/adapter_config.json", "best"):
        assert (single / name).exists(), name


def test_every_subcommand_has_help() -> None:
    for command in ("train", "resume", "inspect", "describe", "export", "demo"):
        done = _cli(command, "--help")
        assert done.returncode == 0 and "usage: lora-studio" in done.stdout, command


def test_bad_config_exits_2_naming_the_field(tmp_path) -> None:
    path = _write(tmp_path, "bad")
    path.write_text(path.read_text().replace("lr = 0.01", "lr = -1"))
    done = _cli("train", str(path))
    assert done.returncode == 2 and "training.lr must be a finite number > 0" in done.stderr
    done = _cli("train", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_refuses_to_overwrite_a_run_then_resume_extends_it(single, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(single, run)
    (run / "run.toml").write_text((run / "run.toml").read_text().replace(str(single), str(run)))
    config = tmp_path / "again.toml"
    config.write_text(RUN_TOML.format(steps=6, out=run))
    done = _cli("train", str(config))
    assert done.returncode == 2 and "already holds a run" in done.stderr
    done = _cli("resume", str(run), "--extra-steps", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "finished: 8/8 steps" in done.stdout


def test_export_adapter_and_merged(single, tmp_path) -> None:
    done = _cli("export", str(single), "--adapter", str(tmp_path / "adapter"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    done = _cli("export", str(single), "--merged", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    merged = load_safetensors(tmp_path / "merged" / "model.safetensors")
    assert "conv1.weight" in merged and not any("lora_" in k for k in merged)


def test_inspect_a_demo_and_a_run_config(single) -> None:
    done = _cli("inspect", "demo:digits", "--targets", "conv1,fc1")
    assert done.returncode == 0 and "2 layers targeted" in done.stdout
    done = _cli("inspect", str(single / "run.toml"))
    assert done.returncode == 0 and "3 layers targeted" in done.stdout


def test_torchrun_two_processes_match_one_and_resume_with_one(single, tmp_path) -> None:
    config = _write(tmp_path, "ddp")
    done = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531", "-m", "lora_studio.core",
         "train", str(config), "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished: 6/6 steps") == 1, "only rank 0 reports"
    expected, actual = _final(single), _final(tmp_path / "ddp")
    for key in expected:
        assert torch.allclose(expected[key], actual[key], atol=DDP_TOLERANCE, rtol=0), key
    # The step-3 checkpoint of the 2-process run resumes in a single process.
    shutil.rmtree(tmp_path / "ddp" / "checkpoints" / "step-00000006")
    done = _cli("resume", str(tmp_path / "ddp"), "--quiet")
    assert done.returncode == 0, done.stderr
    resumed = _final(tmp_path / "ddp")
    for key in expected:
        assert torch.allclose(expected[key], resumed[key], atol=DDP_TOLERANCE, rtol=0), key
