"""``launch_processes(config, on_event, cancel) -> TrainResult``: a run over several processes,
started under ``torchrun`` from inside this process (the window, or ``lora-studio train`` with
``training.processes > 1``), with the same contract as :func:`~.trainer.train`.

::

    this process                       torchrun --standalone --nproc_per_node N (its own session)
    ------------                       ----------------------------------------------------------
    run.toml -> a temporary folder     rank 0 .. N-1: lora-studio train run.toml  (DDP or FSDP)
    tail RUN_DIR/metrics.jsonl  <----  rank 0 writes every event there (the others write none)
    cancel / pause -> the stop file -> every rank polls it; the trainer agrees on it at the next
                                       step (an all-reduce), rank 0 saves a checkpoint, all end
    rank reports, logs/<rank>/  <----  a rank that fails writes what failed; its stderr is kept

Why a stop file and not a signal: torchrun answers SIGINT/SIGTERM by sending SIGTERM to every
worker, which ends them at once, without the checkpoint a stop promises.  The workers poll the
file instead (``lora-studio train`` does, when :data:`STOP_FILE_ENV` names it), so a stop goes
through the trainer's own cancel path.

A pause cannot wait inside a collective for long (gloo and NCCL time out), so pausing a
several-process run saves a checkpoint and stops its processes: the result is 'cancelled',
a warning says so, and resuming relaunches from that checkpoint (``resume=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..run_config import RunConfig
from .events import CancelToken, Event, Failed, Finished, TrainingWarning, TrainResult
from .metrics_log import MetricsTail, event_from_record

STOP_FILE_ENV = "LORA_STUDIO_STOP_FILE"
"""Names the file whose appearance asks every rank of a launched run to stop (with a checkpoint)."""
RANK_REPORTS_ENV = "LORA_STUDIO_RANK_REPORTS"
"""Names the folder where a launched run's failing rank writes ``rank-<R>.json`` (what failed, when)."""

POLL_SECONDS = 0.2  # how often the log is read and the processes looked at: events reach the window within it
STOP_GRACE_SECONDS = 20.0  # torchrun's own SIGTERM -> SIGKILL wait is 30 s; ours ends sooner on an error
ERROR_LINES = 20  # the lines of a failed rank's stderr kept in Failed.details

_running: dict[subprocess.Popen, Path] = {}  # launches in progress and their work folders, for kill_launched_processes
_running_lock = threading.Lock()


@dataclass(frozen=True)
class RankFailure:
    """What one rank of a launched run reported before it exited with an error."""

    rank: int
    message: str
    kind: str
    details: str
    time: float  # when it failed (seconds since the epoch): the earliest failure is the cause


def launch_processes(
    config: RunConfig, on_event: Callable[[Event], None] | None = None, cancel: CancelToken | None = None, *,
    resume: bool = False, extra_steps: int = 0,
) -> TrainResult:
    """Train ``config`` in ``config.training.processes`` processes under torchrun and wait for them;
    like :func:`~.trainer.train` it reports through ``on_event`` and never raises for a failed run.

    Events are rank 0's, read from the run folder's ``metrics.jsonl`` as they are written (the
    metrics in them are already summed over every rank).  A rank that fails becomes one
    :class:`Failed` event naming it and the last lines of its error.  Every process is gone when
    this returns, also when it is interrupted.
    """
    cancel = cancel or CancelToken()
    out = Path(config.output.dir)
    total = config.training.max_steps + (extra_steps if resume else 0)
    problem = _launch_problem(config)
    if problem:
        return _failed(on_event, problem, "config", out, total)
    work = Path(tempfile.mkdtemp(prefix="lora-studio-launch-"))
    try:
        config_path = work / "run.toml"
        config.save(config_path)
        out.mkdir(parents=True, exist_ok=True)
        tail = MetricsTail(out)  # before the start: what the folder's log holds now is an earlier run's
        try:
            return _follow(config_path, config, work, tail, on_event, cancel, resume, extra_steps, total)
        finally:
            tail.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kill_launched_processes() -> None:
    """End every run this process launched, at once (a second Ctrl-C): no checkpoint is written."""
    with _running_lock:
        launched = list(_running.items())
    for proc, work in launched:
        _end_processes(proc, grace=2.0)
        shutil.rmtree(work, ignore_errors=True)  # the caller exits at once: no finally tidies it


def rank_report_path(folder: str | Path, rank: int) -> Path:
    """Where rank ``rank`` of a launched run writes its failure (``RANK_REPORTS_ENV`` names the folder)."""
    return Path(folder) / f"rank-{rank}.json"


def write_rank_report(folder: str | Path, rank: int, message: str, kind: str, details: str = "") -> None:
    """Record that this rank failed (``lora-studio train`` calls it under a launch); never raises."""
    record = {"rank": rank, "message": message, "kind": kind, "details": details, "time": time.time()}
    try:
        path = rank_report_path(folder, rank)
        path.with_suffix(".tmp").write_text(json.dumps(record), encoding="utf-8")
        os.replace(path.with_suffix(".tmp"), path)
    except OSError:  # the launcher then reads the rank's stderr instead
        pass


def _launch_problem(config: RunConfig) -> str:
    """Why this machine cannot start the run's processes, or ''."""
    training = config.training
    if training.processes < 2:
        return (f"training.processes is {training.processes}: a launch needs 2 or more processes; train() runs "
                "one process")
    wants_cuda = training.device == "cuda" or (training.device == "auto" and torch.cuda.is_available())
    if wants_cuda and torch.cuda.device_count() < training.processes:
        return (f"training.processes is {training.processes} with device {training.device!r}, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use at most that many processes, or device 'cpu'")
    return ""


def _command(config_path: Path, processes: int, logs: Path, resume: bool, extra_steps: int) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "--log-dir", str(logs), "--redirects", "3", "-m", "lora_studio.core", "train", str(config_path),
               "--quiet"]
    if resume:
        command += ["--resume", "--extra-steps", str(extra_steps)]
    return command


def _environment(config: RunConfig, work: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env[STOP_FILE_ENV] = str(work / "stop")
    env[RANK_REPORTS_ENV] = str(work / "reports")
    env["PYTHONUNBUFFERED"] = "1"  # a rank's last words reach its log before it dies
    if "OMP_NUM_THREADS" not in env:  # torchrun would set 1 with a banner; CPU ranks share the cores instead
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.training.processes))
    return env


def _follow(config_path: Path, config: RunConfig, work: Path, tail: MetricsTail, on_event, cancel: CancelToken,
            resume: bool, extra_steps: int, total: int) -> TrainResult:
    processes, out = config.training.processes, Path(config.output.dir)
    logs, reports = work / "logs", work / "reports"
    logs.mkdir()
    reports.mkdir()
    held: list[Event] = []  # Finished and Failed wait until every process has ended
    last_step = 0
    stop_asked = False

    def deliver(records: list[dict]) -> None:
        nonlocal last_step
        for record in records:
            event = event_from_record(record)
            if event is None:
                continue
            last_step = max(last_step, getattr(event, "step", 0) or 0)
            if isinstance(event, (Finished, Failed)):
                held.append(event)
            elif on_event is not None:
                on_event(event)

    with open(work / "torchrun.log", "wb") as agent_log:
        proc = subprocess.Popen(
            _command(config_path, processes, logs, resume, extra_steps), stdin=subprocess.DEVNULL,
            stdout=agent_log, stderr=subprocess.STDOUT, env=_environment(config, work),
            start_new_session=os.name == "posix",  # a terminal's Ctrl-C reaches us only: we stop the run cleanly
        )
        with _running_lock:
            _running[proc] = work
        try:
            while proc.poll() is None:
                deliver(tail.read())
                if not stop_asked and (cancel.cancelled or cancel.paused):
                    stop_asked = True
                    (work / "stop").touch()
                    if cancel.paused and not cancel.cancelled:
                        _send(on_event, TrainingWarning(
                            f"a run over {processes} processes cannot wait inside its collectives: pausing saves "
                            "a checkpoint and stops the processes; resume the run to go on from it", last_step))
                time.sleep(POLL_SECONDS)
        finally:
            _end_processes(proc, grace=STOP_GRACE_SECONDS)
            with _running_lock:
                _running.pop(proc, None)
    deliver(tail.read())
    finished = next((e for e in held if isinstance(e, Finished)), None)
    if finished is not None:
        if proc.returncode != 0 and finished.result.status != "cancelled":  # a stopped rank exits 130
            _send(on_event, TrainingWarning(f"the run finished, but its processes exited with code "
                                            f"{proc.returncode}", finished.result.steps))
        _send(on_event, finished)
        return finished.result
    rank0 = next((e for e in held if isinstance(e, Failed)), None)
    failure = _failure(rank0, _rank_failures(reports, logs, processes), processes, work, proc.returncode, last_step)
    _send(on_event, failure)
    return TrainResult("failed", failure.step, total, str(out), error=failure.message)


def _failure(rank0: Failed | None, failures: list[RankFailure], processes: int, work: Path, code: int | None,
             last_step: int) -> Failed:
    """The one Failed event of a launch that did not finish: the first rank's failure, named."""
    if rank0 is not None and all(f.message == rank0.message for f in failures):
        return rank0  # every rank saw the same problem (a config or data error): rank 0's words say it
    if failures:
        first = min(failures, key=lambda f: (f.time, f.rank))
        details = first.details or "(no output)"
        return Failed(f"rank {first.rank} of {processes} failed: {first.message}", first.kind, last_step, details)
    if rank0 is not None:
        return dataclasses.replace(rank0, message=f"rank 0 of {processes} failed: {rank0.message}")
    agent = _last_lines(work / "torchrun.log")
    return Failed(f"the {processes} training processes ended with exit code {code} before the run finished; "
                  f"torchrun said: {agent.splitlines()[-1] if agent else '(nothing)'}", "error", last_step, agent)


def _rank_failures(reports: Path, logs: Path, processes: int) -> list[RankFailure]:
    """Each failed rank's report, or, for a rank that died without one (killed, a crash in C), its
    stderr's error line; ranks that were only stopped because another failed say nothing."""
    found = []
    for rank in range(processes):
        stderr = _rank_stderr(logs, rank)
        tail = _last_lines(stderr) if stderr is not None else ""
        try:
            record = json.loads(rank_report_path(reports, rank).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            details = "\n".join(part for part in (str(record.get("details") or ""), tail) if part)
            found.append(RankFailure(rank, record["message"], str(record.get("kind") or "error"), details,
                                     float(record.get("time") or 0.0)))
            continue
        message = _error_line(tail)
        if message:
            when = stderr.stat().st_mtime if stderr is not None else time.time()
            found.append(RankFailure(rank, message, "error", tail, when))
    return found


def _rank_stderr(logs: Path, rank: int) -> Path | None:
    found = sorted(logs.glob(f"*/attempt_*/{rank}/stderr.log"))
    return found[-1] if found else None


def _error_line(text: str) -> str:
    """The line that says what went wrong in a rank's stderr: our CLI's error line, or an exception's."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("lora-studio") and ": error: " in line:
            return line.split(": error: ", 1)[1]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return ""


def _last_lines(path: Path, count: int = ERROR_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-count:])


def _send(on_event, event: Event) -> None:
    if on_event is not None:
        on_event(event)


def _failed(on_event, message: str, kind: str, out: Path, total: int) -> TrainResult:
    _send(on_event, Failed(message, kind))
    return TrainResult("failed", 0, total, str(out), error=message)


def _end_processes(proc: subprocess.Popen, grace: float) -> None:
    """Make sure torchrun and its workers are gone: SIGTERM to torchrun (it passes it on to every
    worker), then SIGKILL to whatever is left after ``grace`` seconds.  The workers run in sessions
    of their own, so they are found as torchrun's children, not by process group."""
    if proc.poll() is not None:
        return
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid, started in workers:
        if _start_time(pid) == started:  # the same process, not a new one given its pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of each child of ``pid`` (Linux /proc; elsewhere none are found and
    torchrun's own SIGTERM to its workers has to do)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields and fields[1] == str(pid):
            found.append((int(entry.name), fields[19]))
    return found


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()
