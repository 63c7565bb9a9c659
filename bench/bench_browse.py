"""Browsing benchmark: describe + counts on a meta-device Llama-2-7B config.

Peers in the same run: building the model on the meta device (what the window does
first), and materialising one decoder layer for real (float32), scaled by the layer
count as the floor a non-meta browse would pay.  Prints times and memory, and ratios.

    .venv/bin/python bench/bench_browse.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lora_studio.core import LoraConfig, count_parameters, describe


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    start = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    build_s = time.perf_counter() - start

    lora = LoraConfig(r=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    rss0 = rss_mb()
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        tree = describe(model, lora)
        counts = count_parameters(model)
        timings.append(time.perf_counter() - start)
    browse_s = min(timings)
    browse_mb = rss_mb() - rss0

    rss0 = rss_mb()
    start = time.perf_counter()
    layer = LlamaDecoderLayer(config, layer_idx=0)  # one real layer, float32
    one_layer_s = time.perf_counter() - start
    one_layer_mb = rss_mb() - rss0
    del layer

    added = sum(n.added_parameters for n in tree.walk())
    print(f"model: Llama-2-7B config, {counts.total:,} parameters; LoRA r=16 on q,k,v,o adds {added:,}")
    print(f"build on meta device:            {build_s * 1000:8.1f} ms")
    print(f"describe + count_parameters:     {browse_s * 1000:8.1f} ms   (+{browse_mb:.1f} MB RSS)")
    print(f"one real decoder layer (float32): {one_layer_s * 1000:7.1f} ms   (+{one_layer_mb:.0f} MB RSS)")
    print(f"x32 layers, the instantiation floor: {one_layer_s * 32:.1f} s, {one_layer_mb * 32 / 1024:.1f} GB")
    print(f"ratio browse/instantiate: time {browse_s / (one_layer_s * 32):.4f}, "
          f"memory {max(browse_mb, 0.1) / (one_layer_mb * 32):.5f}")


if __name__ == "__main__":
    main()
