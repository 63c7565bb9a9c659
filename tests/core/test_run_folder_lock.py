"""One run folder, one owner: a second trainer (thread or process) is refused naming the first, and
deletes nothing; the lock goes away with its process, however that process ends."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading

from run_configs import digits_run, with_training

from lora_studio.core.training import CheckpointSaved, Failed, train
from lora_studio.core.training.events import CancelToken
from lora_studio.core.training.run_folder import OWNER_FILE, RunFolderBusy, RunFolderLock

HOLDER = textwrap.dedent("""
    import sys
    from lora_studio.core.training.run_folder import RunFolderLock
    lock = RunFolderLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin (or kills us)
""")


def _holder(folder) -> subprocess.Popen:
    """Another process holding ``folder``'s lock; returns once it holds it."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_trainer_on_a_running_folder_is_refused_and_deletes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    cancel, first_events, second = CancelToken(), [], {}
    stepped = threading.Event()

    def on_event(event) -> None:
        first_events.append(event)
        # Hold the first run mid-way while the second one tries the folder: after step 2's checkpoint is
        # written (pausing at its StepMetrics left that checkpoint being written while the folder was listed).
        if isinstance(event, CheckpointSaved) and event.step == 2:
            cancel.pause()
            stepped.set()

    config = digits_run(out, max_steps=6, checkpoint_every=1, seed=0)
    runner = threading.Thread(target=lambda: second.setdefault("first", train(config, on_event, cancel)))
    runner.start()
    assert stepped.wait(120)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    events = []
    refused = train(with_training(config, seed=1).replace(output=dataclasses.replace(config.output, overwrite=True)),
                    events.append)
    after_refusal = sorted(p.relative_to(out) for p in out.rglob("*"))
    cancel.resume()
    runner.join(120)

    assert refused.status == "failed"
    failure = next(e for e in events if isinstance(e, Failed))
    assert failure.kind == "config" and "in use by another run" in failure.message
    assert f"process {os.getpid()}" in failure.message and "started" in failure.message
    assert after_refusal == before  # overwrite = true deleted nothing of the running run
    assert second["first"].status == "finished" and second["first"].steps == 6
    assert "seed = 0" in (out / "run.toml").read_text()  # the config on disk is the run that made the adapter
    assert not (out / OWNER_FILE).exists()  # released at the end


def test_another_process_holding_the_folder_is_named_and_its_death_frees_it(tmp_path) -> None:
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        events = []
        result = train(digits_run(out, max_steps=2), events.append)
        failure = next(e for e in events if isinstance(e, Failed))
        assert result.status == "failed" and f"process {holder.pid}" in failure.message
        assert not (out / "run.toml").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 gave no chance to clean up: the OS released the lock, its owner record is stale
    assert (out / OWNER_FILE).exists()
    assert train(digits_run(out, max_steps=2)).status == "finished"


def test_the_lock_refuses_at_once_within_one_process_and_is_reusable(tmp_path) -> None:
    first, second = RunFolderLock(tmp_path), RunFolderLock(tmp_path)
    with first:
        try:
            second.acquire()
        except RunFolderBusy as exc:
            assert str(tmp_path) in str(exc) and "choose another output.dir" in str(exc)
        else:
            raise AssertionError("a held folder was locked twice")
    with second:
        assert (tmp_path / OWNER_FILE).exists()


def test_output_dir_that_is_a_file_is_named(tmp_path) -> None:
    path = tmp_path / "taken"
    path.write_text("not a folder")
    events = []
    result = train(digits_run(path, max_steps=1), events.append)
    failure = next(e for e in events if isinstance(e, Failed))
    assert result.status == "failed" and "is a file, not a folder" in failure.message and str(path) in failure.message
    assert path.read_text() == "not a folder"
