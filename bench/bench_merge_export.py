"""Merge and export: LoRA Studio's merged export vs writing the same tensors with ``save_file`` alone.

Issue 7, benchmark 2.  A BERT-base-sized encoder (hidden 768, 12 layers, vocabulary 30,522:
about 110M parameters, built from a config, float32) carries a rank-16 adapter on every
query, key, value and dense projection (72 layers).  Timed, interleaved, median (and mean) of N:

* ``floor``            -- ``safetensors.torch.save_file`` of the merged model's state dict, already
  in memory (nothing merged, nothing checked: the bare write, which leaves the data in the page
  cache for the kernel to write back later);
* ``floor + fsync``    -- the same, then ``os.fsync``: the bare write made durable, the least any
  crash-safe writer pays;
* ``PEFT merge_and_unload + save_file`` -- the peer: PEFT's LoRA on the same base with the same
  adapter weights (checked: it merges to the same weights within 1e-5), ``merge_and_unload`` on a
  copy taken beforehand (untimed), then ``save_file``;
* ``merge_and_unload + save_file`` -- the same with our ``merge_and_unload``;
* ``export_merged (safetensors)`` -- ``core.export_merged`` on the live model wrapped as a plain
  module: merged copy (frozen tensors shared, one ``addmm`` per adapted weight, NaN/Inf check),
  atomic durable write (``core/disk/safetensors_writer.py``), JSON sidecar;
* ``export_merged (transformers)`` -- the same for the transformers model itself: a
  ``save_pretrained`` folder;
* ``export_merged + checksum`` (``--checksum``) -- the safetensors export with the SHA-256 in the sidecar.

Files go to a temporary folder on the same disk and are deleted after each write; ``os.sync()``
runs (untimed) before every timed call, so no arm pays for the writeback another arm left behind.

    .venv/bin/python bench/bench_merge_export.py --rounds 5 [--checksum] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lora_studio.core import LoraConfig, attach, export_merged, merge_and_unload


def build(hidden: int, layers: int) -> nn.Module:
    """The adapted encoder, with non-zero B so merging really changes every weight."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden)  # fmt: skip
    model = BertModel(config, add_pooling_layer=False)
    attach(model, LoraConfig(r=16, alpha=32, targets=["query", "key", "value", "dense"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    return model


def build_peft(ours: nn.Module, hidden: int, layers: int) -> nn.Module:
    """PEFT's LoRA on the same base (same seed), carrying our adapter's very weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden)  # fmt: skip
    peft_model = get_peft_model(BertModel(config, add_pooling_layer=False),
                                PeftLoraConfig(r=16, lora_alpha=32, target_modules=["query", "key", "value", "dense"]))
    ours_state = ours.state_dict()
    peft_state = peft_model.state_dict()
    mapped = {f"base_model.model.{k}": v for k, v in ours_state.items()}
    assert mapped.keys() == peft_state.keys(), "the two engines disagree on the adapted layers"
    peft_model.load_state_dict(mapped, strict=True)
    return peft_model


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``save_file`` accepts: contiguous, no shared storage."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def main() -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--checksum", action="store_true", help="also time the export with its SHA-256 checksum")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, spinning OpenMP threads waiting for a "
                        "busy core make every op many times slower)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = build(a.hidden, a.layers)
    n_params = sum(t.numel() for t in merge_and_unload(copy.deepcopy(model)).state_dict().values())
    adapted = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
    merged_tensors = state_dict_for_save(merge_and_unload(copy.deepcopy(model)))
    plain = nn.Sequential(model)  # not a PreTrainedModel: exported as one .safetensors file
    root = Path(tempfile.mkdtemp(dir=a.dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n_params / 1e6:.1f}M parameters, "
          f"{adapted} adapted layers, r=16, float32; writing to {root}; {a.rounds} interleaved rounds, medians")

    def floor(out: Path) -> None:
        save_file(merged_tensors, str(out / "model.safetensors"))

    def durable_floor(out: Path) -> None:
        save_file(merged_tensors, str(out / "model.safetensors"))
        fd = os.open(out / "model.safetensors", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    peft_model = build_peft(model, a.hidden, a.layers)
    peft_merged = state_dict_for_save(copy.deepcopy(peft_model).merge_and_unload())
    worst = max(float((peft_merged[k] - merged_tensors[k]).abs().max()) for k in merged_tensors)
    assert peft_merged.keys() == merged_tensors.keys() and worst < 1e-5, "PEFT merges to other weights"
    copies: list[nn.Module] = []
    peft_copies: list[nn.Module] = []

    def peft_merge_then_save(out: Path) -> None:
        merged = peft_copies.pop().merge_and_unload()
        save_file(state_dict_for_save(merged), str(out / "model.safetensors"))

    def merge_then_save(out: Path) -> None:
        merged = merge_and_unload(copies.pop())
        save_file(state_dict_for_save(merged), str(out / "model.safetensors"))

    arms: dict[str, Callable[[Path], object]] = {
        "floor: save_file": floor,
        "floor + fsync": durable_floor,
        "PEFT merge_and_unload + save_file": peft_merge_then_save,
        "merge_and_unload + save_file": merge_then_save,
        "export_merged (safetensors)": lambda out: export_merged(plain, out / "model.safetensors"),
        "export_merged (transformers)": lambda out: export_merged(model, out / "folder"),
    }
    if a.checksum:
        arms["export_merged + checksum"] = lambda out: export_merged(plain, out / "model.safetensors", checksum=True)
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(a.rounds + 1):  # round 0 warms up
        for name in names[r % len(names):] + names[: r % len(names)]:
            copies.append(copy.deepcopy(model))  # untimed: merge_and_unload changes its argument
            peft_copies.append(copy.deepcopy(peft_model))
            out = root / "out"
            out.mkdir()
            os.sync()  # untimed: the previous arm's dirty pages are not this arm's cost
            t0 = time.perf_counter()
            arms[name](out)
            elapsed = time.perf_counter() - t0
            shutil.rmtree(out)
            copies.clear()
            peft_copies.clear()
            if r:
                times[name].append(elapsed)
    shutil.rmtree(root)
    floor_s = statistics.median(times["floor: save_file"])
    durable_s = statistics.median(times["floor + fsync"])
    print("\n| what | median s | mean s | / floor | / floor + fsync |\n| --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"| {name} | {median:.3f} | {statistics.fmean(ts):.3f} | {median / floor_s:.2f} | "
              f"{median / durable_s:.2f} |")


if __name__ == "__main__":
    main()
