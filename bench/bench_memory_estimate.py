"""Training-memory estimate against the measured peak, on four models, a few real steps on the CPU (or a GPU).

    .venv/bin/python bench/bench_memory_estimate.py [--steps 3] [--threads 2] [--device cuda]

For each model the adapter is attached with core's ``attach``, then AdamW steps run
(forward, summed cross-entropy, backward, step, ``zero_grad(set_to_none=True)``: the trainer's
step).  One step runs first, so the optimizer's moments exist; then ``--steps`` more run under
``torch.profiler`` with ``profile_memory=True``, which records every CPU tensor allocation and
free.  The measured peak is the bytes of the tensors alive before those steps (parameters,
buffers, optimizer states) plus the highest running sum of allocations minus frees during them:
the tensor memory the estimate claims (weights + gradients + optimizer states + activations),
without the interpreter, the libraries or the allocator's caches (the process RSS holds those too).
With ``--device cuda`` the same steps run on the GPU and the measured peak is
``torch.cuda.max_memory_allocated`` over them (tensor bytes too; the caching allocator's reserve and
cuBLAS workspaces are not counted, as the estimate does not count them).

The estimate is ``estimate_training_memory(model, lora, batch=BatchShape(...))`` taken before
attaching, as the window shows it.  The bar: estimate / measured within 0.7-1.3.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lora_studio.core import (
    BatchShape,
    LoraConfig,
    attach,
    demo_config,
    estimate_training_memory,
    load_model,
    training_lora_config,
)

MIB = 1024**2
BAR = (0.7, 1.3)


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensors."""
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def loss_of(model, batch: dict) -> torch.Tensor:
    """The trainer's summed cross-entropy: next token for a causal LM, the label otherwise."""
    if "input_ids" in batch:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    else:
        out = model(batch["pixel_values"])
    logits = out.logits if hasattr(out, "logits") else out
    if logits.dim() == 3:
        shifted = logits[:, :-1].float()
        return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                               reduction="sum")
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


def measured_peak(model, make_batch, steps: int, device: torch.device) -> int:
    """Tensor bytes at the peak of ``steps`` training steps (see the module docstring)."""
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        batch = {k: v.to(device) for k, v in make_batch().items()}
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    alive = tensor_bytes([*model.parameters(), *model.buffers()])
    alive += tensor_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return alive + peak


def cases():
    """(name, model, lora config, batch shape, batch maker) for each benchmarked model."""
    digits = demo_config("digits", output_dir="/tmp/unused")
    loaded = load_model(digits.model)
    b = digits.training.batch_size
    yield ("digits demo (CNN, batch %d, 8×8)" % b, loaded.model, training_lora_config(digits.lora, loaded.head),
           BatchShape(b, image=(1, 8, 8)),
           lambda: {"pixel_values": torch.randn(b, 1, 8, 8), "labels": torch.randint(0, 10, (b,))})

    text = demo_config("text", output_dir="/tmp/unused")
    loaded = load_model(text.model)
    b, n = text.training.batch_size, text.data.max_length
    yield (f"MiniLM-L6 (text demo, batch {b}, {n} tokens)", loaded.model,
           training_lora_config(text.lora, loaded.head), BatchShape(b, length=n),
           lambda: {"input_ids": torch.randint(0, 30000, (b, n)), "attention_mask": torch.ones(b, n, dtype=torch.long),
                    "labels": torch.randint(0, 2, (b,))})

    import torchvision

    b = 16
    yield ("resnet18 (random weights, batch 16, 224²)", torchvision.models.resnet18(num_classes=10),
           LoraConfig(r=8, targets=["conv1", "conv2"], modules_to_save=["fc"]), BatchShape(b, image=(3, 224, 224)),
           lambda: {"pixel_values": torch.randn(b, 3, 224, 224), "labels": torch.randint(0, 10, (b,))})

    from transformers import GPT2Config, GPT2LMHeadModel

    b, n, vocab = 8, 128, 5000
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=256, n_layer=4, n_head=4, n_positions=256,
                                      bos_token_id=0, eos_token_id=0))

    def gpt2_batch() -> dict:
        ids = torch.randint(0, vocab, (b, n))
        return {"input_ids": ids, "attention_mask": torch.ones(b, n, dtype=torch.long), "labels": ids}

    yield (f"tiny GPT-2 (4×256, batch {b}, {n} tokens)", gpt2, LoraConfig(r=8, targets=["c_attn", "c_proj", "c_fc"]),
           BatchShape(b, length=n), gpt2_batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per model (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the peak from torch.cuda.max_memory_allocated)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, model, lora, shape, make_batch in cases():
        estimate = estimate_training_memory(model, lora, batch=shape)
        attach(model, lora)
        measured = measured_peak(model, make_batch, args.steps, device)
        rows.append((name, estimate, measured))
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler profile_memory"
    print(f"Training memory on {device.type}, float32, AdamW; measured = tensor bytes at the peak of {args.steps} "
          f"steps ({how})")
    print(f"{'model':<44} {'weights':>8} {'grads':>7} {'optim':>7} {'activ.':>8} {'estimate':>9} {'measured':>9} "
          f"{'ratio':>6}")
    worst = 1.0
    for name, e, measured in rows:
        ratio = e.total / measured
        worst = ratio if abs(ratio - 1) > abs(worst - 1) else worst
        print(f"{name:<44} {e.weights / MIB:>8.1f} {e.gradients / MIB:>7.2f} {e.optimizer_states / MIB:>7.2f} "
              f"{e.activations / MIB:>8.1f} {e.total / MIB:>9.1f} {measured / MIB:>9.1f} {ratio:>6.2f}")
    print("(MiB; activations by " + ", ".join(sorted({e.activation_method for _, e, _ in rows})) + ")")
    verdict = "within" if BAR[0] <= worst <= BAR[1] else "OUTSIDE"
    print(f"worst ratio {worst:.2f}: {verdict} the ±30% bar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
