"""launch_processes: a run over two gloo CPU processes under torchrun, started from inside the test,
reports like train() and trains the same adapter; a stop leaves a checkpoint and no process; a rank
that fails is named, without a hang."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from run_configs import digits_run, with_training

from lora_studio.core import (
    CancelToken,
    CheckpointSaved,
    EvalMetrics,
    Failed,
    Finished,
    ModelConfig,
    SampleResult,
    Samples,
    StepMetrics,
    TrainingWarning,
    TrainResult,
    launch_processes,
    train,
)
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.training import event_from_record, event_record
from lora_studio.core.training import launcher as launcher_module
from lora_studio.core.training.metrics_log import MetricsLog, MetricsTail

DDP_TOLERANCE = 1e-5  # float32 sums in another order (two halves of the batch, then an all-reduce)
HANG_GUARD_SECONDS = 300  # far beyond a launch's ~20 s here: reaching it means the launch hung

# A user's model factory that only rank 1 cannot build: what a missing per-node file looks like.
RANK_ONE_FAILS = '''
import os
from lora_studio.core.models.demo_models import DigitsNet

def build(num_classes: int = 10):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 cannot read its weights shard /shards/1.safetensors")
    return DigitsNet(num_classes)
'''


class _Watched:
    """Records torchrun's pid (the launcher's Popen) and, during the run, its worker processes."""

    def __init__(self, monkeypatch) -> None:
        self.procs: list[subprocess.Popen] = []
        self.workers: set[int] = set()
        real = subprocess.Popen

        def popen(*args, **kwargs):
            proc = real(*args, **kwargs)
            self.procs.append(proc)
            return proc

        monkeypatch.setattr(launcher_module.subprocess, "Popen", popen)

    def look(self) -> None:
        for proc in self.procs:
            self.workers.update(pid for pid, _ in launcher_module._children(proc.pid))

    def alive(self) -> list[int]:
        pids = {p.pid for p in self.procs} | self.workers
        return sorted(pid for pid in pids if _running(pid))


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run_dir / "adapter" / "adapter_model.safetensors")


def _launch_in_thread(config, on_event, cancel=None) -> TrainResult:
    """launch_processes on a thread, joined with a guard: a hung launch fails the test instead of the suite."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=launch_processes(config, on_event, cancel)),
                              daemon=True)
    thread.start()
    thread.join(HANG_GUARD_SECONDS)
    assert not thread.is_alive(), "launch_processes hung"
    return box["result"]


def test_two_processes_report_in_order_and_train_what_one_process_trains(tmp_path, monkeypatch) -> None:
    single = digits_run(tmp_path / "one", max_steps=4, eval_every=2)
    expected = train(single)
    assert expected.status == "finished"
    watched = _Watched(monkeypatch)
    events = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics) and event.step == 1:
            watched.look()

    two_folder = dataclasses.replace(single.output, dir=str(tmp_path / "two"))
    config = with_training(single.replace(output=two_folder), processes=2)
    result = _launch_in_thread(config, on_event)
    assert result.status == "finished", result.error
    assert result.steps == 4 and Path(result.adapter_dir).is_dir()
    assert isinstance(events[-1], Finished) and events[-1].result == result
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [1, 2, 3, 4]
    assert [e.step for e in events if isinstance(e, EvalMetrics)] == [2, 4]
    steps = [getattr(e, "step", None) for e in events[:-1]]
    assert steps == sorted(steps), "events arrive in the order rank 0 wrote them"
    assert not any(isinstance(e, Failed) for e in events)
    # The same global batch of 16 split over two processes trains the same adapter.
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=DDP_TOLERANCE, rtol=0), key
    assert abs(expected.final_loss - result.final_loss) <= DDP_TOLERANCE * max(1.0, abs(expected.final_loss))
    assert watched.workers, "the workers were seen while the run went on"
    assert watched.alive() == []


def test_a_stopped_launch_leaves_a_checkpoint_and_no_process(tmp_path, monkeypatch) -> None:
    watched = _Watched(monkeypatch)
    cancel = CancelToken()
    events = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics) and not cancel.cancelled:
            watched.look()
            cancel.cancel()

    config = with_training(digits_run(tmp_path / "run", max_steps=2000), processes=2)
    result = _launch_in_thread(config, on_event, cancel)
    assert result.status == "cancelled" and 0 < result.steps < 2000
    assert result.checkpoint_dir and Path(result.checkpoint_dir).is_dir()
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved and saved[-1].step == result.steps
    assert not [e for e in events if isinstance(e, TrainingWarning)], "a stop is not a problem"
    assert watched.workers and watched.alive() == []


def test_a_paused_launch_saves_and_stops_then_resumes_from_its_checkpoint(tmp_path) -> None:
    cancel = CancelToken()
    events = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics):
            cancel.pause()

    config = with_training(digits_run(tmp_path / "run", max_steps=2000), processes=2)
    paused = _launch_in_thread(config, on_event, cancel)
    assert paused.status == "cancelled" and Path(paused.checkpoint_dir).is_dir()
    warnings = [e.message for e in events if isinstance(e, TrainingWarning)]
    assert any("cannot wait inside its collectives" in w for w in warnings)
    more = []
    config = with_training(config, max_steps=paused.steps + 2)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=launch_processes(config, more.append, resume=True)))
    thread.start()
    thread.join(HANG_GUARD_SECONDS)
    assert not thread.is_alive()
    assert box["r"].status == "finished" and box["r"].steps == paused.steps + 2
    assert [e.step for e in more if isinstance(e, StepMetrics)] == [paused.steps + 1, paused.steps + 2]


def test_a_failing_rank_is_named_with_its_error(tmp_path, monkeypatch) -> None:
    factory = tmp_path / "net.py"
    factory.write_text(RANK_ONE_FAILS)
    watched = _Watched(monkeypatch)
    config = with_training(digits_run(tmp_path / "run", max_steps=50), processes=2)
    config = config.replace(model=ModelConfig(source="python", name=f"{factory}:build"))
    events = []
    result = _launch_in_thread(config, events.append)
    assert result.status == "failed"
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1 and events[-1] is failed[0]
    assert "rank 1 of 2" in failed[0].message and "/shards/1.safetensors" in failed[0].message
    assert "/shards/1.safetensors" in failed[0].details  # the rank's own last lines
    assert result.error == failed[0].message
    assert watched.alive() == []


def test_more_processes_than_gpus_are_refused_before_anything_starts(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = with_training(digits_run(tmp_path / "run"), device="cuda", processes=2)
    events = []
    result = launch_processes(config, events.append)
    assert result.status == "failed" and events == [Failed(result.error, "config")]
    assert "1 CUDA device" in result.error and "training.processes" in result.error


@pytest.mark.parametrize("event", [
    StepMetrics(3, 10, 0.5, 1.25, 1e-3, 0.7, 100.0, None, 1024, 12.0),
    EvalMetrics(4, 0.9, 0.75, None, True, {"fc1": 0.1}, [[1, 0], [2, 3]], ["a", "b"]),
    Samples(4, [SampleResult("x", "y", "y", True, 0.9), SampleResult("prompt", "text")]),
    CheckpointSaved(4, "/runs/a/checkpoints/step-00000004", "step"),
    TrainingWarning("careful", 2),
    Finished(TrainResult("finished", 4, 4, "/runs/a", final_loss=0.5, variant={"name": "lora"})),
    Failed("bad", "data", 1, "trace"),
])
def test_every_logged_event_reads_back_as_itself(event) -> None:
    import json

    assert event_from_record(json.loads(json.dumps(event_record(event)))) == event


def test_the_tail_skips_an_earlier_log_and_follows_a_recreated_one(tmp_path) -> None:
    old = MetricsLog(tmp_path, tensorboard=False)
    old.write(TrainingWarning("from an earlier run"))
    old.close()
    tail = MetricsTail(tmp_path)
    (tmp_path / "metrics.jsonl").unlink()  # a fresh run clears the folder, then logs anew
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write(TrainingWarning("first", 1))
    assert [r["message"] for r in tail.read()] == ["first"]
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"event": "TrainingWarning", "mess')  # a line still being written waits
    assert tail.read() == []
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'age": "second", "step": 2}\n')
    assert [r["message"] for r in tail.read()] == ["second"]
    log.close()
    tail.close()


def test_the_cli_relaunches_itself_under_torchrun_for_several_processes(tmp_path) -> None:
    import os
    import sys

    config = with_training(digits_run(tmp_path / "run", max_steps=3), processes=1)
    config.save(tmp_path / "run.toml")
    done = subprocess.run(
        [sys.executable, "-m", "lora_studio.core", "train", str(tmp_path / "run.toml"), "--processes", "2", "--quiet"],
        capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training in 2 processes under torchrun (DDP)" in done.stderr
    assert done.stdout.count("finished: 3/3 steps") == 1, done.stdout  # rank 0's result, printed once
    assert (tmp_path / "run" / "adapter").is_dir()


def test_extra_steps_without_resume_is_refused_by_name(tmp_path, capsys) -> None:
    from lora_studio.core.cli import main

    digits_run(tmp_path / "run").save(tmp_path / "run.toml")
    assert main(["train", str(tmp_path / "run.toml"), "--extra-steps", "2"]) == 2
    assert "--extra-steps extends a resumed run; add --resume" in capsys.readouterr().err
