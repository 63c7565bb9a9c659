"""Checkpoints: kill-and-resume is bit-identical, cancel stops within a step, extend and pause work."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from run_configs import digits_run, final_tensors

from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.training import (
    CancelToken,
    CheckpointSaved,
    StepMetrics,
    latest_checkpoint,
    list_checkpoints,
    resume_run,
    train,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """An uninterrupted 12-step run with dropout (so the random state matters)."""
    out = tmp_path_factory.mktemp("reference")
    result = train(digits_run(out, dropout=0.1, max_steps=12, checkpoint_every=5))
    assert result.status == "finished"
    return out


def test_kill_and_resume_is_bit_identical(reference, tmp_path) -> None:
    out = tmp_path / "killed"
    config = digits_run(out, dropout=0.1, max_steps=12, checkpoint_every=5)
    config.save(tmp_path / "run.toml")
    # A real kill: the process dies abruptly (no cleanup, no final checkpoint) during step 8.
    script = textwrap.dedent(f"""
        import os
        from lora_studio.core.run_config import RunConfig
        from lora_studio.core.training import StepMetrics, train
        def on_event(event):
            if isinstance(event, StepMetrics) and event.step == 7:
                os._exit(137)
        train(RunConfig.load({str(tmp_path / "run.toml")!r}), on_event)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == 137, killed.stderr
    assert latest_checkpoint(out).name == "step-00000005"
    result = resume_run(out)
    assert result.status == "finished" and result.steps == 12
    expected, actual = final_tensors(reference), final_tensors(out)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs after resume"
    opt_expected = load_safetensors(latest_checkpoint(reference) / "optimizer.safetensors")
    opt_actual = load_safetensors(latest_checkpoint(out) / "optimizer.safetensors")
    assert all(torch.equal(opt_expected[k], opt_actual[k]) for k in opt_expected)


def test_cancel_stops_within_one_step_and_leaves_a_loadable_checkpoint(tmp_path) -> None:
    cancel = CancelToken()
    steps: list[int] = []

    def on_event(event):
        if isinstance(event, StepMetrics):
            steps.append(event.step)
            if event.step == 3:  # mid-epoch: 256 samples / 16 = 16 steps per epoch
                cancel.cancel()

    result = train(digits_run(tmp_path, max_steps=40), on_event, cancel)
    assert result.status == "cancelled"
    assert steps[-1] == 3 and result.steps == 3
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    resumed = resume_run(tmp_path)
    assert resumed.status == "finished" and resumed.steps == 40


def test_extend_a_finished_run(reference, tmp_path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = final_tensors(run)
    result = resume_run(run, extra_steps=3)
    assert result.status == "finished" and result.steps == 15 and result.total_steps == 15
    after = final_tensors(run)
    assert any(not torch.equal(before[k], after[k]) for k in before), "extending trained further"


def test_pause_holds_between_steps(tmp_path) -> None:
    cancel = CancelToken()
    stamps: dict[int, float] = {}

    def on_event(event):
        if isinstance(event, StepMetrics):
            stamps[event.step] = time.perf_counter()
            if event.step == 2:
                cancel.pause()
                threading.Timer(0.5, cancel.resume).start()

    result = train(digits_run(tmp_path, max_steps=4), on_event, cancel)
    assert result.status == "finished"
    assert stamps[3] - stamps[2] >= 0.5


def test_checkpoints_are_pruned_and_events_name_them(tmp_path) -> None:
    saved = []
    train(digits_run(tmp_path, max_steps=8, checkpoint_every=2, keep_checkpoints=2),
          lambda e: saved.append(e) if isinstance(e, CheckpointSaved) and e.kind != "best" else None)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    assert [e.step for e in saved] == [2, 4, 6, 8] and saved[-1].kind == "final"
