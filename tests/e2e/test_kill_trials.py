"""kill -9 at random points of a run, of its checkpoint writes and of an export; every trial either
resumes to a result bit-identical to an uninterrupted run (CPU), or keeps the previous file.

The kill points come from a seeded generator (named in each trial's id), measured from an event
the test waits for (the first logged step, the export's start), never from a fixed sleep.  With a
checkpoint after every step most of a run's time is spent writing checkpoints, so most kills land
inside one: in a staging folder, between fsyncs, or between the two renames of a folder swap.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lora_studio.core.disk.safe_loading import load_safetensors

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
max_steps = 10
batch_size = 16
lr = 0.01
eval_every = 0
checkpoint_every = 1
keep_checkpoints = 2
device = "cpu"

[output]
dir = "{out}"
tensorboard = false
"""
SEED = 1502
DEADLINE_S = 300  # a loaded CI machine: generous, and only reached when something hangs


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lora_studio.core", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen) -> bool:
    """Poll ``condition`` until it holds (True) or ``process`` ended first (False)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.01)
    raise AssertionError("the process neither reached the point nor ended")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(60)


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The adapter of the same run, never killed."""
    root = tmp_path_factory.mktemp("whole")
    (root / "RUN.toml").write_text(RUN_TOML.format(out=root / "run"))
    done = subprocess.run([sys.executable, "-m", "lora_studio.core", "train", str(root / "RUN.toml"), "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    return _adapter(root / "run")


@pytest.mark.parametrize("trial", range(4), ids=lambda t: f"seed{SEED}-trial{t}")
def test_a_run_killed_anywhere_resumes_bit_identically(tmp_path, uninterrupted, trial) -> None:
    rng = random.Random(SEED * 100 + trial)
    out = tmp_path / "run"
    (tmp_path / "RUN.toml").write_text(RUN_TOML.format(out=out))
    process = _start("train", str(tmp_path / "RUN.toml"), "--quiet")
    metrics = out / "metrics.jsonl"
    try:
        started = _wait_for(lambda: metrics.is_file() and b"StepMetrics" in metrics.read_bytes(), process)
        if started:
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere among the next steps and their checkpoints
    finally:
        _kill(process)
    if process.returncode == 0:
        pytest.skip("the run finished before the kill point (a fast machine); nothing to resume")
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    # From the newest complete checkpoint, or from step 0 when none was done; in a process like the
    # uninterrupted run's (torch's thread count decides the order of float sums).
    resumed_run = subprocess.run([sys.executable, "-m", "lora_studio.core", "resume", str(out), "--quiet"],
                                 env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert resumed_run.returncode == 0, resumed_run.stderr
    assert not [p for p in out.rglob(".lora-studio-tmp-*")], "staging left after the resumed run"
    resumed = _adapter(out)
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize("trial", range(3), ids=lambda t: f"seed{SEED}-trial{t}")
def test_an_export_killed_anywhere_keeps_the_previous_file(tmp_path, trial) -> None:
    rng = random.Random(SEED * 1000 + trial)
    (tmp_path / "RUN.toml").write_text(RUN_TOML.format(out=tmp_path / "run").replace("max_steps = 10",
                                                                                    "max_steps = 2"))
    trained = subprocess.run([sys.executable, "-m", "lora_studio.core", "train", str(tmp_path / "RUN.toml"),
                              "--quiet"], env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert trained.returncode == 0, trained.stderr
    merged = tmp_path / "merged.safetensors"
    first = subprocess.run([sys.executable, "-m", "lora_studio.core", "export", str(tmp_path / "run"), "--merged",
                            str(merged)], env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert first.returncode == 0, first.stderr
    previous = merged.read_bytes()

    process = _start("export", str(tmp_path / "run"), "--merged", str(merged))
    # Python's start-up and torch's import take most of an export: kill anywhere in that span or in the
    # write after it, measured from the start (the export leaves no earlier sign to wait for).
    started = time.monotonic()
    _wait_for(lambda: time.monotonic() - started > rng.uniform(0.5, 6.0), process)
    _kill(process)
    assert merged.read_bytes() == previous or process.returncode == 0  # the old file whole, or the new one
    if process.returncode == 0:
        return
    again = subprocess.run([sys.executable, "-m", "lora_studio.core", "export", str(tmp_path / "run"), "--merged",
                            str(merged)], env=_env(), capture_output=True, text=True, timeout=DEADLINE_S)
    assert again.returncode == 0, again.stderr
    assert merged.read_bytes() == previous  # the same run exports the same bytes
    assert not list(tmp_path.glob(".lora-studio-tmp-*")), "the next export did not clear the killed one's files"
