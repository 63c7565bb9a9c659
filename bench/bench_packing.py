"""Padded against packed causal-LM batches on the story demo GPT-2: real tokens/s and targets per step.

    .venv/bin/python bench/bench_packing.py --steps 20 --batch 8 --block 256 [--varied]

Both sides train the same LoRA (r=8 on c_attn, c_proj, c_fc; AdamW) on the same examples, the chat
demo's conversations and the pirate stories (``resources/demo``), one forward, backward and step per
batch.  *padded*: ``batch`` examples per step, each padded to the longest of its batch (data.packing
off).  *packed*: ``batch`` rows of at most ``block`` tokens holding whole examples, with the
block-diagonal mask (data.packing on, :mod:`lora_studio.core.data.packing`).  Printed: ms/step, real
(non-padding) tokens per second, the share of padding, and next-token targets per step, each side
timed over the same number of steps after two warm-up steps, the two sides alternating per round.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

from lora_studio.core.adapter.config import LoraConfig
from lora_studio.core.adapter.lifecycle import attach
from lora_studio.core.data.collate import IGNORE_INDEX, batch_tokens, make_collate
from lora_studio.core.data.packing import PackedDataset
from lora_studio.core.disk.resource_files import demo_file
from lora_studio.core.models.demo_models import load_demo_model
from lora_studio.core.training.task_loss import score_batch


def examples(tokenizer, block: int, varied: bool = False) -> list[dict[str, list[int]]]:
    """The chat demo's conversations (loss on the answer) and the pirate stories (loss on all), cut to a
    block; ``varied``: each story cut after a random number of its sentences (long-tailed lengths, as in
    instruction data) instead of whole."""
    out = []
    rng = torch.Generator().manual_seed(1)
    for line in demo_file("chat.jsonl").read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["messages"]
        prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns[:-1])
        prompt_ids = tokenizer(prompt + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer(turns[-1]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer + [tokenizer.eos_token_id]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]})
    for story in demo_file("story/pirate.txt").read_text(encoding="utf-8").split("\n\n"):
        if story.strip():
            text = story.strip()
            if varied:
                sentences = re.split(r"(?<=[.!?])\s+", text)
                keep = int(torch.randint(1, len(sentences) + 1, (1,), generator=rng))
                text = " ".join(sentences[:keep])
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append({"input_ids": ids, "labels": list(ids)})
    order = torch.randperm(len(out), generator=torch.Generator().manual_seed(0)).tolist()
    return [{k: v[:block] for k, v in out[i].items()} for i in order]  # mixed: chats and stories side by side


def batches(items: list, batch: int, collate, steps: int) -> list[dict[str, torch.Tensor]]:
    return [collate([items[(s * batch + i) % len(items)] for i in range(batch)]) for s in range(steps)]


def run(model, optimizer, prepared: list[dict[str, torch.Tensor]]) -> tuple[float, int, int, int]:
    """(seconds, real tokens, padded positions, targets) over ``prepared``."""
    tokens = positions = targets = 0
    start = time.perf_counter()
    for batch in prepared:
        score = score_batch(model, batch, "causal-lm", "transformers")
        (score.loss_sum / max(score.targets, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch_tokens(batch)
        positions += batch["input_ids"].numel()
        targets += score.targets
    return time.perf_counter() - start, tokens, positions, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--varied", action="store_true", help="stories cut to random lengths (long-tailed)")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_demo_model("story")
    model = attach(loaded.model, LoraConfig(r=8, alpha=16, targets=["c_attn", "c_proj", "c_fc"], dropout=0.0))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    tokenizer = loaded.tokenizer
    items = examples(tokenizer, args.block, args.varied)
    packed = PackedDataset(items, args.block)
    collate = make_collate(tokenizer.pad_token_id or 0)
    sides = {"padded": items, "packed": [packed[i] for i in range(len(packed))]}
    print(f"{len(items)} examples ({sum(len(e['input_ids']) for e in items)} tokens) -> {len(packed)} packed rows "
          f"of at most {args.block}; batch {args.batch}, {args.steps} steps a side a round, {args.rounds} rounds")
    totals = {name: [0.0, 0, 0, 0] for name in sides}
    for _ in range(args.rounds):
        for name, rows in sides.items():
            run(model, optimizer, batches(rows, args.batch, collate, 2))  # warm-up
            result = run(model, optimizer, batches(rows, args.batch, collate, args.steps))
            totals[name] = [a + b for a, b in zip(totals[name], result)]
    print("| batches | ms/step | real tokens/s | padding | targets/step |")
    print("| --- | --- | --- | --- | --- |")
    steps = args.steps * args.rounds
    for name, (seconds, tokens, positions, targets) in totals.items():
        print(f"| {name} | {1000 * seconds / steps:.1f} | {tokens / seconds:,.0f} | {1 - tokens / positions:.1%} | "
              f"{targets / steps:,.0f} |")
    (ps, pt, _, ptg), (ks, kt, _, ktg) = totals["padded"], totals["packed"]
    print(f"packed / padded: tokens/s {(kt / ks) / (pt / ps):.2f}x, targets/step {ktg / ptg:.2f}x, "
          f"targets/s {(ktg / ks) / (ptg / ps):.2f}x")


if __name__ == "__main__":
    main()
