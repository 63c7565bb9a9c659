"""UI event-loop latency while a run trains in the studio window, against the same window idle;
and keystroke-to-paint in the Rank field with a transformers model (MiniLM) loaded.

    .venv/bin/python bench/bench_ui_latency.py [--seconds 8] [--interval-ms 10] [--threads 0]
    .venv/bin/python bench/bench_ui_latency.py --keystrokes 30     # MiniLM loaded, Rank field typed into

Keystrokes: the text demo (MiniLM-L6, ``core.models.minilm_folder()``) is opened and loaded,
then digits are typed into the Rank field with ``QTest.keyClick`` (a real key event: the field
commits on ``textEdited``, the session rebuilds the tree, the panels react).  Each keystroke is
timed from the key event to the end of a synchronous ``repaint()`` of the window after the event
queue is empty: what the user waits for before the character and the tree show.  The counts and
the memory estimate are computed on a worker 150 ms later; the UI-loop lateness while typing
(a 10 ms probe timer, as above) shows their delivery does not stall the loop either.
The issue's bar: keystroke-to-paint under 50 ms.

A precise 10 ms ``QTimer`` on the UI thread records when each tick really arrives; its
lateness (actual gap minus 10 ms) is what a user feels as a sluggish window.  It is
measured first with the window idle, then while the digits demo trains at full speed on
a worker thread (W2's ``RunPanel.start_run``, with live plots, log and stats subscribed,
or the engine on a :class:`FunctionWorker` when no run panel is present), offscreen.
The issue's bar: under 50 ms at the 99th percentile while training.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import torch  # noqa: E402
from PySide6.QtCore import QEventLoop, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from lora_studio.core import CancelToken, StepMetrics, demo_config, train  # noqa: E402

BAR_P99_MS = 50.0  # the requirement


def lateness_ms(seconds: float, interval_ms: int) -> list[float]:
    """Run the event loop for ``seconds`` with a ``interval_ms`` precise timer; each tick's lateness in ms."""
    stamps: list[float] = []
    timer = QTimer(timerType=Qt.TimerType.PreciseTimer, interval=interval_ms)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    timer.start()
    loop.exec()
    timer.stop()
    return [max(0.0, (b - a) * 1000 - interval_ms) for a, b in zip(stamps, stamps[1:])]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 and the maximum of ``values``."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not condition() and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.005)
    return condition()


def keystrokes(window_class, count: int, interval_ms: int) -> int:
    """Keystroke-to-paint in the Rank field with the text demo's MiniLM loaded (see the module docstring)."""
    from PySide6.QtTest import QTest

    window = window_class()
    window.resize(1400, 900)
    window.show()
    session = window.session
    window.model_panel.open_demo("text")
    if not _wait_until(lambda: session.loaded is not None, 180.0):
        print("MiniLM did not load within 180 s", file=sys.stderr)
        return 1
    counts = getattr(window, "counts_panel", None)
    _wait_until(lambda: False, 1.0)
    editor = window.settings_panel.row("lora.r").editor
    editor.setFocus()
    modules = sum(1 for _ in session.browse_model.modules())
    times: list[float] = []
    typed = "1612824" * (count // 7 + 1)
    stamps: list[float] = []
    probe = QTimer(timerType=Qt.TimerType.PreciseTimer, interval=interval_ms)
    probe.timeout.connect(lambda: stamps.append(time.perf_counter()))
    probe.start()
    for i in range(count):
        if i % 2 == 0:
            editor.selectAll()  # the next digit replaces the rank: 1, 16, 1, 12, ... never 0
        key = getattr(Qt.Key, f"Key_{typed[i]}")
        start = time.perf_counter()
        QTest.keyClick(editor, key)
        QApplication.processEvents()
        window.repaint()
        times.append((time.perf_counter() - start) * 1000)
        _wait_until(lambda: False, 0.25)  # a typist's pause: the debounced estimate runs and arrives
    probe.stop()
    if counts is not None and hasattr(counts, "wait_until_current"):
        counts.wait_until_current()
    late = [max(0.0, (b - a) * 1000 - interval_ms) for a, b in zip(stamps, stamps[1:])]
    if hasattr(session, "mark_saved"):
        session.mark_saved()  # the typed ranks are no changes to keep: close without the save question
    window.close()
    cut = percentiles(times)
    lag = percentiles(late)
    print(f"Keystroke-to-paint in the Rank field, MiniLM-L6 loaded ({modules} modules), {count} keys, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'':<22} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'key to paint':<22} " + " ".join(f"{cut[k]:>8.2f}" for k in ("p50", "p95", "p99", "max")))
    print(f"{'UI loop lateness':<22} " + " ".join(f"{lag[k]:>8.2f}" for k in ("p50", "p95", "p99", "max")))
    final = session.config.lora.r
    print(f"rank after typing: {final}; estimate shown: "
          f"{getattr(getattr(counts, 'estimate', None), 'memory', None)}")
    verdict = "meets" if cut["p95"] < BAR_P99_MS else "MISSES"
    print(f"key-to-paint p95 {cut['p95']:.2f} ms {verdict} the {BAR_P99_MS:g} ms bar")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time of each phase")
    parser.add_argument("--interval-ms", type=int, default=10, help="the probe timer's interval")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the benchmarks' setting; 0: torch's default)")
    parser.add_argument("--engine", action="store_true",
                        help="train with the engine on a FunctionWorker even when the window has a run panel")
    parser.add_argument("--keystrokes", type=int, default=0,
                        help="measure keystroke-to-paint over this many keys in the Rank field with MiniLM loaded")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    from lora_studio.app.main_window import MainWindow

    if args.keystrokes:
        return keystrokes(MainWindow, args.keystrokes, args.interval_ms)

    window = MainWindow()
    window.resize(1400, 900)
    window.show()
    _wait_until(lambda: False, 1.0)  # let the window settle (first paints, the demo's meta build)

    idle = lateness_ms(args.seconds, args.interval_ms)

    run_dir = Path(tempfile.mkdtemp(prefix="lora-studio-latency-"))
    # Far more steps than the measurement needs: the run is stopped after it.
    config = demo_config("digits", output_dir=run_dir, steps=20_000)
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, eval_every=500, checkpoint_every=0, log_every=10))
    steps: list[int] = []
    session = window.session
    session.sig_run_event.connect(lambda e: steps.append(e.step) if isinstance(e, StepMetrics) else None)
    run_panel = getattr(window, "run_panel", None)
    if hasattr(run_panel, "start_run") and not args.engine:
        how = "RunPanel.start_run"
        run_panel.start_run(config)
        stop = run_panel.stop_and_wait
    else:  # no run panel yet: the engine on a worker, its events to the session as the panel would
        from lora_studio.app.state.workers import FunctionWorker

        how = "engine on a FunctionWorker"
        cancel = CancelToken()
        worker = FunctionWorker(lambda on_event: train(config, on_event, cancel))
        worker.sig_event.connect(session.sig_run_event)
        worker.start()

        def stop() -> bool:
            cancel.cancel()
            # The worker's thread quits through a queued call: keep the UI loop turning while it ends.
            return _wait_until(lambda: not worker.is_running(), 30.0)

    if not _wait_until(lambda: bool(steps), 60.0):
        print("the run produced no step within 60 s", file=sys.stderr)
        return 1
    first = steps[-1]
    start = time.perf_counter()
    busy = lateness_ms(args.seconds, args.interval_ms)
    elapsed = time.perf_counter() - start
    trained = steps[-1] - first
    stop()
    window.close()

    rows = {"idle window": percentiles(idle), "training": percentiles(busy)}
    print(f"UI event-loop lateness of a {args.interval_ms} ms timer, {args.seconds:g} s per phase, "
          f"torch threads {torch.get_num_threads()}, run started by {how}")
    print(f"{'phase':<12} {'ticks':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("idle", idle), ("training", busy)):
        cut = rows["idle window" if name == "idle" else "training"]
        print(f"{name:<12} {len(values):>6} "
              + " ".join(f"{cut[k]:>8.2f}" for k in ("p50", "p95", "p99", "max")))
    for key in ("p50", "p95", "p99"):
        idle_value = max(rows["idle window"][key], 0.01)  # an idle loop can be on time to the microsecond
        print(f"training / idle {key}: {rows['training'][key] / idle_value:.1f}x")
    print(f"training speed while measured: {trained / elapsed:.0f} steps/s ({trained} steps)")
    verdict = "meets" if rows["training"]["p99"] < BAR_P99_MS else "MISSES"
    print(f"p99 while training {rows['training']['p99']:.2f} ms {verdict} the {BAR_P99_MS:g} ms bar")
    app.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
