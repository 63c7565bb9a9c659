"""Large CSV benchmark: peak memory and time to the first batch (and first training step) by file size.

Generates CSVs of the sizes asked for (default 20 and 200 MB; add 2000 for 2 GB) in a
temporary folder: short review-like sentences, three labels, a quoted comma in every row
and a quoted newline in every 64th.  For each size, one fresh subprocess per arm, so each
peak RSS (``ru_maxrss``) is that arm's alone:

* **floor** — imports + the text demo's MiniLM tokenizer, no data;
* **batch** — the floor + the engine's datasets (``read_label_names`` + ``build_datasets``,
  the path a run takes, validation split 0.1) + a ``DataLoader`` over a shuffled order (an int64 tensor, as the engine's
  ``BatchPlan``) and its first batch of 32;
* **step** (``--step``) — a real run (``train()``, the text demo's MiniLM + LoRA, 1 step,
  no evaluation or checkpoint) on the file; its floor is the same run on the demo's own
  60-row ``sentences.csv``.

Prints peak RSS, its growth over the floor and the time to the first batch (first step),
per size.  The sizes differ by 10x, so a time or a growth that does not grow 10x with the file
is independent of it up to the one indexing pass.

    .venv/bin/python bench/bench_large_csv.py --sizes 20,200 --step
    .venv/bin/python bench/bench_large_csv.py --sizes 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WORDS = ("the a movie film was great terrible boring lovely plot actor scene ending long short "
         "music story cast slow quick warm cold bright dark").split()
LABELS = ("pos", "neg", "mixed")


def generate_csv(path: Path, megabytes: int) -> int:
    """Write a CSV of about ``megabytes`` MB; returns its row count."""
    lines = []
    for i in range(8192):
        words = " ".join(WORDS[(i * 7 + k * 5) % len(WORDS)] for k in range(6 + i % 14))
        newline = "\nsecond line" if i % 64 == 0 else ""
        lines.append(f'"{words}, take {i}{newline}",{LABELS[i % 3]}\n')
    block = "".join(lines).encode()
    rows = 0
    with path.open("wb") as f:
        f.write(b"text,label\n")
        while f.tell() < megabytes * 10**6:
            f.write(block)
            rows += len(lines)
    return rows


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    start = time.perf_counter()
    arm, path = sys.argv[1], sys.argv[2]
    import torch
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer
    from lora_studio.core import DataConfig
    from lora_studio.core.data import build_datasets, read_label_names
    from lora_studio.core.models import LoadedModel, minilm_folder
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    tokenizer(["warm up"], truncation=True, max_length=32)
    result = {"imports_s": time.perf_counter() - start}
    if arm == "batch":
        t0 = time.perf_counter()
        config = DataConfig(kind="text-classification", train=path, validation_split=0.1, max_length=32)
        loaded = LoadedModel(model=torch.nn.Identity(), task="sequence-classification",
                             forward_style="transformers", tokenizer=tokenizer)
        bundle = build_datasets(config, loaded, read_label_names(config))
        result["dataset_s"] = time.perf_counter() - t0
        # Shuffled as the engine's BatchPlan does (one int64 permutation tensor): torch's RandomSampler
        # makes it a list of Python ints (about 36 bytes a row) -- see bench/README.md.
        order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))
        sampler = (int(i) for i in order.numpy())  # lazily: iterating a tensor unbinds it all at once
        loader = DataLoader(bundle.train, batch_size=32, sampler=sampler, collate_fn=bundle.collate)
        batch = next(iter(loader))
        result["first_batch_s"] = time.perf_counter() - t0
        result["rows"] = len(bundle.train) + len(bundle.validation)
        result["batch"] = list(batch["input_ids"].shape)
    elif arm == "step":
        import dataclasses, tempfile
        from lora_studio.core import demo_config, train
        with tempfile.TemporaryDirectory() as out:
            config = demo_config("text", output_dir=out, steps=1)
            config = dataclasses.replace(
                config, data=dataclasses.replace(config.data, train=path, validation_split=0.0),
                training=dataclasses.replace(config.training, eval_every=0, eval_at_start=False,
                                             checkpoint_every=0))
            t0 = time.perf_counter()
            run = train(config)
            result["first_step_s"] = time.perf_counter() - t0
            result["status"] = run.status
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
""")


def run_arm(arm: str, path: str) -> dict:
    """One arm in a fresh interpreter; its JSON result (peak RSS in MB, times in s)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, arm, path], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arm} on {path} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20,200", help="CSV sizes in MB, comma-separated (2000 = 2 GB)")
    parser.add_argument("--step", action="store_true", help="also time a one-step training run on each file")
    parser.add_argument("--dir", default=None, help="where to write the CSVs (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    from lora_studio.core import demo_sentences_path

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        floor = run_arm("floor", "")
        print(f"floor (imports + MiniLM tokenizer): peak {floor['peak_mb']:.0f} MB, imports {floor['imports_s']:.1f} s")
        step_floor = run_arm("step", demo_sentences_path()) if args.step else None
        if step_floor:
            print(f"step floor (1-step run on the 60-row demo CSV): peak {step_floor['peak_mb']:.0f} MB, "
                  f"{step_floor['first_step_s']:.1f} s to the end of step 1")
        print(f"{'size':>8} {'rows':>11} {'write s':>8} {'peak MB':>8} {'growth':>7} {'x floor':>8} "
              f"{'dataset s':>10} {'1st batch s':>12}" + (f" {'step MB':>8} {'growth':>7} {'step s':>7}"
                                                          if args.step else ""))
        for size in sizes:
            path = Path(folder) / f"reviews_{size}mb.csv"
            t0 = time.perf_counter()
            rows = generate_csv(path, size)
            write_s = time.perf_counter() - t0
            batch = run_arm("batch", str(path))
            assert batch["rows"] == rows, (batch["rows"], rows)
            line = (f"{path.stat().st_size / 1e6:7.0f}M {rows:>11,} {write_s:8.1f} {batch['peak_mb']:8.0f} "
                    f"{batch['peak_mb'] - floor['peak_mb']:+7.0f} {batch['peak_mb'] / floor['peak_mb']:8.2f} "
                    f"{batch['dataset_s']:10.1f} {batch['first_batch_s']:12.1f}")
            if step_floor:
                step = run_arm("step", str(path))
                if step["status"] != "finished":
                    raise SystemExit(f"the one-step run on {path} ended {step['status']}")
                line += (f" {step['peak_mb']:8.0f} {step['peak_mb'] - step_floor['peak_mb']:+7.0f} "
                         f"{step['first_step_s']:7.1f}")
            print(line, flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
