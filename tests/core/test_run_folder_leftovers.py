"""What a killed or failed run leaves is cleared or reused, never a reason to lose work:
staging from killed writes goes, a cut folder swap is put back, a run that never reached a
checkpoint is restarted (or resumed from step 0) without ``overwrite``, a damaged checkpoint
state is named, and a run that skipped most of its steps does not report success."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from run_configs import digits_run, final_tensors
from test_training_guards import FACTORY

from lora_studio.core.disk.atomic_files import atomic_write_json, remove_stale_staging
from lora_studio.core.run_config import ModelConfig
from lora_studio.core.training import Failed, TrainingWarning, latest_checkpoint, resume_run, train


def _dead_pid() -> int:
    """The pid of a process that has ended (the kernel hands pids out in turn: not reused at once)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_staging_of_a_dead_writer_goes_a_live_ones_stays_and_a_cut_swap_is_put_back(tmp_path) -> None:
    dead = _dead_pid()
    (tmp_path / f".lora-studio-tmp-{dead}-file-abc.safetensors").write_bytes(b"x" * 100)
    (tmp_path / f".lora-studio-tmp-{dead}-stage-q1").mkdir()
    (tmp_path / f".lora-studio-tmp-{dead}-new-step-2-ff").mkdir()
    kept = tmp_path / f".lora-studio-tmp-{dead}-was-step-1"  # its target step-1 is missing: put back
    kept.mkdir()
    (kept / "state.json").write_text("{}")
    (tmp_path / "step-3").mkdir()
    (tmp_path / f".lora-studio-tmp-{dead}-was-step-3").mkdir()  # step-3 is in place: the old copy goes
    (tmp_path / ".lora-studio-tmp-old-step-4-123").mkdir()  # the names before pids were in them
    live = tmp_path / ".lora-studio-tmp-1-file-live.json"  # pid 1 is always running
    live.write_text("{}")

    removed = remove_stale_staging(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["step-1", "step-3", "step-4", live.name])
    assert (tmp_path / "step-1" / "state.json").read_text() == "{}"
    assert len(removed) == 4


def test_a_write_clears_what_a_killed_write_left_in_its_folder(tmp_path) -> None:
    leftover = tmp_path / f".lora-studio-tmp-{_dead_pid()}-file-0a0a.json"
    leftover.write_bytes(b"{" * 1000)
    atomic_write_json(tmp_path / "facts.json", {"a": 1})
    assert not leftover.exists() and json.loads((tmp_path / "facts.json").read_text()) == {"a": 1}


def test_a_run_start_clears_staging_left_in_the_run_folders(tmp_path) -> None:
    out = tmp_path / "run"
    assert train(digits_run(out, max_steps=2, checkpoint_every=1)).status == "finished"
    junk = [out / "checkpoints" / ".lora-studio-tmp-99999999-new-step-00000009-aa",
            out / "adapter" / ".lora-studio-tmp-99999999-stage-bb", out / ".lora-studio-tmp-file-cc.json"]
    for path in junk:
        path.mkdir()
    assert resume_run(out, extra_steps=1).status == "finished"
    assert not any(path.exists() for path in junk)


def test_a_run_whose_set_up_failed_is_reused_by_the_fixed_config(tmp_path) -> None:
    out = tmp_path / "run"
    broken = digits_run(out, max_steps=2)
    broken = broken.replace(lora=broken.lora.replace(targets=["no_such_layer"]))
    events = []
    assert train(broken, events.append).status == "failed"
    assert (out / "run.toml").exists()  # what was tried stays readable until a new run replaces it
    fixed = train(digits_run(out, max_steps=2))  # no overwrite needed: the folder holds no results
    assert fixed.status == "finished"
    assert "no_such_layer" not in (out / "run.toml").read_text()
    logged = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "Failed" not in logged  # the failed attempt's log went with it


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path) -> None:
    out = tmp_path / "run"
    config = digits_run(out, max_steps=3, checkpoint_every=1)
    (out).mkdir()
    config.save(out / "run.toml")  # what a run killed in set-up (or before step 1's checkpoint) leaves
    (out / "metrics.jsonl").write_text('{"event": "StepMetrics"}\n')
    events = []
    result = resume_run(out, events.append)
    assert result.status == "finished" and result.steps == 3
    assert any(isinstance(e, TrainingWarning) and "from step 0" in e.message for e in events)
    uninterrupted = train(digits_run(tmp_path / "again", max_steps=3, checkpoint_every=1))
    assert uninterrupted.status == "finished"
    for key, value in final_tensors(tmp_path / "again").items():
        assert torch.equal(value, final_tensors(out)[key]), key  # step 0 really is a fresh start


def test_a_run_with_results_still_needs_overwrite(tmp_path) -> None:
    out = tmp_path / "run"
    assert train(digits_run(out, max_steps=1)).status == "finished"
    events = []
    assert train(digits_run(out, max_steps=1), events.append).status == "failed"
    assert "already holds a run" in next(e for e in events if isinstance(e, Failed)).message


@pytest.mark.parametrize("damage", ["not json {", '{"format_version": 1, "trainer": {}}'])
def test_a_damaged_checkpoint_state_is_named_with_the_way_out(tmp_path, damage) -> None:
    out = tmp_path / "run"
    assert train(digits_run(out, max_steps=2, checkpoint_every=1)).status == "finished"
    state = latest_checkpoint(out) / "state.json"
    state.write_text(damage)
    events = []
    assert resume_run(out, events.append, extra_steps=1).status == "failed"
    message = next(e for e in events if isinstance(e, Failed)).message
    assert str(state) in message and "is damaged" in message and "resume from the checkpoint before it" in message


def test_skipping_most_steps_is_a_failure_not_a_success(tmp_path) -> None:
    mostly = "\n\ndef nan_mostly():\n    return Flaky(set(range(2, 40)), error=False)\n"
    (tmp_path / "flaky.py").write_text(FACTORY + mostly)
    config = digits_run(tmp_path / "run", max_steps=6, checkpoint_every=2, nonfinite="skip")
    config = config.replace(model=ModelConfig(source="python", name=f"{tmp_path / 'flaky.py'}:nan_mostly"),
                            lora=config.lora.replace(targets=["body.1"]))
    events = []
    result = train(config, events.append)
    failure = next(e for e in events if isinstance(e, Failed))
    assert result.status == "failed" and failure.kind == "nonfinite"
    assert "5 of the run's 6 steps were skipped" in failure.message
    assert not (tmp_path / "run" / "adapter").exists()


def test_resuming_results_without_a_checkpoint_is_refused_and_deletes_nothing(tmp_path) -> None:
    import shutil

    out = tmp_path / "run"
    assert train(digits_run(out, max_steps=2, checkpoint_every=1)).status == "finished"
    shutil.rmtree(out / "checkpoints")  # e.g. removed by hand to save space
    events = []
    assert resume_run(out, events.append, extra_steps=1).status == "failed"
    assert "no checkpoint to resume from" in next(e for e in events if isinstance(e, Failed)).message
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # the trained adapter is still there
