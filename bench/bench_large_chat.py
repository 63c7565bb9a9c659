"""Peak memory and time to the first step of `lora-studio train` on a large JSONL of conversations.

Issue 17: a chat set of any size must train with bounded memory and start in bounded time.  The
script writes a JSONL of OpenAI-style ``messages`` conversations (system, user, assistant turns)
of the asked size, then runs the real CLI in a subprocess on the story demo's GPT-2 (chatml, loss
on the assistant turns), one step, no evaluation, and reports the child's peak RSS (``ru_maxrss``)
and the time until its first step is logged, next to the same run on a 1 MB file (the floor:
imports, the model, one step).

    .venv/bin/python bench/bench_large_chat.py --sizes 1,1000        # MB; 1000 = 1 GB
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN_TOML = """
[model]
source = "demo"
name = "story"

[data]
kind = "causal-lm"
train = "{train}"
format = "messages"
chat_template = "chatml"
validation_split = 0.0
max_length = 128

[lora]
r = 8
alpha = 16
targets = ["c_attn"]

[training]
max_steps = 1
batch_size = 8
eval_every = 0
checkpoint_every = 0
device = "cpu"

[output]
dir = "{out}"
tensorboard = false
"""


def write_conversations(path: Path, megabytes: int, seed: int = 0) -> int:
    """Write about ``megabytes`` MB of conversations to ``path``; return how many."""
    rng = random.Random(seed)
    words = "ship sea crew map gold island storm wind sail parrot rum anchor deck cannon".split()
    target, written, count = megabytes * 1_000_000, 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            question = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15)))
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25)))
            line = json.dumps({"messages": [{"role": "system", "content": "Answer like a pirate."},
                                            {"role": "user", "content": f"Tell me of the {question}?"},
                                            {"role": "assistant", "content": f"Arr! The {answer}, matey!"}]})
            out.write(line + "\n")
            written += len(line) + 1
            count += 1
    return count


def run_once(folder: Path, megabytes: int) -> dict[str, float]:
    """Train one step on a fresh file of ``megabytes`` MB in a child process; its peak and timings."""
    data = folder / f"chat-{megabytes}mb.jsonl"
    rows = write_conversations(data, megabytes)
    out = folder / f"run-{megabytes}mb"
    (folder / "RUN.toml").write_text(RUN_TOML.format(train=data, out=out))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "lora_studio.core", "train", str(folder / "RUN.toml"), "--quiet"],
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    first_step = None
    metrics = out / "metrics.jsonl"
    while child.poll() is None:
        if first_step is None and metrics.is_file() and b"StepMetrics" in metrics.read_bytes():
            first_step = time.perf_counter() - started
        time.sleep(0.05)
    total = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"the run on {data} failed (exit {child.returncode})")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, in KiB
    data.unlink()
    return {"rows": rows, "peak_mb": max(peak, before) / 1024, "first_step_s": first_step or total, "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100", help="file sizes in MB, smallest first (the floor)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        results = [(size, run_once(Path(tmp), size)) for size in sizes]
    floor = results[0][1]
    print(f"{'JSONL':>8} {'rows':>12} {'peak RSS':>10} {'x floor':>8} {'first step':>11} {'x floor':>8}")
    for size, r in results:
        print(f"{size:>6}MB {r['rows']:>12,} {r['peak_mb']:>8.0f}MB {r['peak_mb'] / floor['peak_mb']:>8.2f} "
              f"{r['first_step_s']:>10.1f}s {r['first_step_s'] / floor['first_step_s']:>8.2f}")


if __name__ == "__main__":
    main()
