"""Training step: our LoRA vs PEFT's LoRA vs full fine-tuning vs the frozen-model floor.

Issue 7, benchmark 1.  Four models built from configs (no downloads): a BERT-style
encoder, a GPT-2-style decoder (transformers' ``Conv1D`` projections), a torchvision
ResNet-18 and a torchvision ViT.  Rank 16, alpha 32, on the attention and MLP
projections (every 3×3/1×1 ``conv1``/``conv2`` of the ResNet's blocks), with
``lora_dropout`` 0 and 0.1.  Every arm starts from the same base weights and runs the
same batch; the loss is the mean square of the model's output (so no head dominates).

Arms:

* ``floor`` -- forward and backward through the frozen base with no weight gradients: the
  first layer's output is made to require grad, so backward runs through every layer
  but no parameter gradient is computed and there is no optimizer step;
* ``full``  -- every parameter trains (AdamW);
* ``ours``/``peft`` -- LoRA by LoRA Studio and by PEFT, AdamW on the adapters;
* ``unfused`` (``--unfused``) -- ours with the fused LoRA function switched off: the op-by-op
  path the engine ran before it, for a before/after measured in the same run;
* ``nofold`` (``--nofold``) -- ours without the LoRA update folded into the weight (the fused
  function alone): what folding does to the step time, measured in the same run.

Step time: zero_grad + forward + backward + AdamW step.  The arms are interleaved (one
step of each in turn, many rounds) and the median is reported, because the development
machine is shared and noisy.

Memory, deterministic (CPU has no allocator high-water mark worth trusting): the bytes
saved for backward, read from every node of the autograd graph (``_saved_*``, and
``saved_tensors`` of custom functions) and deduplicated by storage (q, k and v saving the same input count once; parameters are not
activations and are left out), plus gradients and AdamW state.  ``total`` adds the
weights.  On CUDA (``--device cuda``) ``torch.cuda.max_memory_allocated`` over one step is
reported as well.

    .venv/bin/python bench/bench_training_step.py                # issue sizes (hidden 512, 6 layers, seq 128, batch 16)
    .venv/bin/python bench/bench_training_step.py --quick        # hidden 256, 2 layers, seq 64, batch 8
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lora_studio.core import LoraConfig, attach
from lora_studio.core.layers import AdapterLayer

RANK, ALPHA = 16, 32


@dataclass
class Workload:
    """One model family: how to build its base, which layers to adapt, a batch and a loss."""

    name: str
    build: Callable[[], nn.Module]
    targets: list[str]  # suffixes, matched the same way by LoRA Studio and PEFT
    first_layer: Callable[[nn.Module], nn.Module]  # whose output requires grad in the floor arm
    batch: Callable[[torch.dtype], dict]  # images in the base's dtype
    loss: Callable[[object], torch.Tensor]


def workloads(a: argparse.Namespace) -> dict[str, Workload]:
    """The four model families at the sizes given on the command line."""
    from torchvision.models import resnet18
    from torchvision.models.vision_transformer import VisionTransformer
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    heads = max(1, a.hidden // 64)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8192, (a.batch, a.seq), generator=gen)
    grid = max(2, round(math.sqrt(a.seq)))  # ViT patches per side: about `seq` tokens
    image = torch.randn(a.batch, 3, grid * 16, grid * 16, generator=gen)
    res_image = torch.randn(a.batch, 3, a.image, a.image, generator=gen)
    # Base dropouts off: the comparison is about what the adapters add.
    bert = BertConfig(vocab_size=8192, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=heads,
                      intermediate_size=4 * a.hidden, max_position_embeddings=a.seq, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)  # fmt: skip
    gpt2 = GPT2Config(vocab_size=8192, n_embd=a.hidden, n_layer=a.layers, n_head=heads, n_positions=a.seq,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    hidden_out = lambda out: out.last_hidden_state.float().square().mean()  # noqa: E731
    logits_out = lambda out: out.float().square().mean()  # noqa: E731
    return {
        "bert": Workload("bert", lambda: BertModel(bert, add_pooling_layer=False), ["query", "key", "value", "dense"],
                         lambda m: m.embeddings.word_embeddings, lambda dt: {"input_ids": ids}, hidden_out),
        "gpt2": Workload("gpt2", lambda: GPT2Model(gpt2), ["c_attn", "c_proj", "c_fc"],
                         lambda m: m.wte, lambda dt: {"input_ids": ids}, hidden_out),
        "resnet": Workload("resnet", lambda: resnet18(num_classes=10), ["conv1", "conv2"],
                           lambda m: m.conv1, lambda dt: {"x": res_image.to(dt)}, logits_out),
        "vit": Workload("vit", lambda: VisionTransformer(grid * 16, 16, a.layers, heads, a.hidden, 4 * a.hidden,
                                                         num_classes=10),
                        ["self_attention", "mlp.0", "mlp.3"], lambda m: m.conv_proj, lambda dt: {"x": image.to(dt)},
                        logits_out),
    }  # fmt: skip


@dataclass
class Arm:
    """One way of training the same base: its model, its optimizer (None for the floor)."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None


def make_arm(label: str, work: Workload, base: nn.Module, device: torch.device) -> Arm:
    """Copy ``base`` and set it up as arm ``label`` (floor, full, ours@p, peft@p)."""
    model = copy.deepcopy(base)
    kind, _, dropout = label.partition("@")
    if kind == "floor":
        model.requires_grad_(False)
        work.first_layer(model).register_forward_hook(lambda _m, _i, out: out.requires_grad_())
    elif kind in ("ours", "unfused", "nofold"):
        attach(model, LoraConfig(r=RANK, alpha=ALPHA, dropout=float(dropout), targets=work.targets))
        if kind == "unfused":  # the op-by-op path of before the fused function: before/after in one run
            for layer in model.modules():
                if isinstance(layer, AdapterLayer):
                    layer.limit_fast_paths("none")
        if kind == "nofold":  # the fused function without the update folded into the weight
            for layer in model.modules():
                if isinstance(layer, AdapterLayer):
                    layer.limit_fast_paths("fused")
    elif kind == "peft":
        import peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GPT-2's fan_in_fan_out notice
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=RANK, lora_alpha=ALPHA, lora_dropout=float(dropout), target_modules=work.targets,
                fan_in_fan_out=work.name == "gpt2"))  # fmt: skip
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Arm(label, model, torch.optim.AdamW(trainable, lr=1e-4) if trainable else None)


def step(arm: Arm, work: Workload, batch: dict) -> None:
    """One training step (the floor: forward and backward only)."""
    if arm.optimizer is not None:
        arm.optimizer.zero_grad(set_to_none=True)
    work.loss(arm.model(**batch)).backward()
    if arm.optimizer is not None:
        arm.optimizer.step()


@dataclass
class Memory:
    saved: int  # bytes saved for backward (unique storages, parameters left out)
    grads: int
    optim: int
    weights: int
    cuda_peak: int | None = None

    @property
    def training(self) -> int:
        """What training holds beyond the weights, at the end of backward (an upper bound of the peak)."""
        return self.saved + self.grads + self.optim

    @property
    def total(self) -> int:
        return self.training + self.weights


def saved_bytes(loss: torch.Tensor, leave_out: set[int]) -> int:
    """Bytes autograd keeps for backward of ``loss``: every tensor saved by a node of its graph
    (``node._saved_*``; ``saved_tensors`` of custom functions), one count per storage, storages in
    ``leave_out`` (the parameters) not counted.

    Read from the graph rather than through ``saved_tensors_hooks``, whose presence changes what
    the fused LoRA function may share (core/layers/fused_lora.py).
    """
    storages: dict[int, int] = {}
    nodes: dict[int, object] = {}  # id -> node, kept alive so ids stay unique
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        found: list = []
        for attr in dir(node):
            if attr.startswith("_saved_") or attr == "saved_tensors":
                try:
                    value = getattr(node, attr)
                except RuntimeError:  # released, or not saved for this call
                    continue
                found.extend(value if isinstance(value, (tuple, list)) else [value])
        for t in found:
            if torch.is_tensor(t):
                s = t.untyped_storage()
                if s.data_ptr() not in leave_out and s.nbytes() > 0:
                    storages[s.data_ptr()] = s.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())


def measure_memory(arm: Arm, work: Workload, batch: dict, device: torch.device) -> Memory:
    """Deterministic accounting of one step (after a warm-up step, so AdamW state exists)."""
    step(arm, work, batch)
    params = {p.untyped_storage().data_ptr() for p in arm.model.parameters()}
    if arm.optimizer is not None:
        arm.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    loss = work.loss(arm.model(**batch))
    saved = saved_bytes(loss, params)
    loss.backward()
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        cuda_peak = torch.cuda.max_memory_allocated() - start
    grads = sum(p.grad.nbytes for p in arm.model.parameters() if p.grad is not None)
    optim = 0
    if arm.optimizer is not None:
        optim = sum(v.nbytes for s in arm.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        arm.optimizer.step()
    weights = sum(p.nbytes for p in arm.model.parameters())
    return Memory(saved, grads, optim, weights, cuda_peak)


def time_arms(arms: list[Arm], work: Workload, batch: dict, rounds: int, device: torch.device) -> dict[str, float]:
    """Median ms per step of each arm, the arms interleaved round by round."""
    times: dict[str, list[float]] = {arm.label: [] for arm in arms}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for arm in arms:  # warm-up
        step(arm, work, batch)
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]  # rotate: no arm always runs after the same one
        for arm in order:
            sync()
            t0 = time.perf_counter()
            step(arm, work, batch)
            sync()
            times[arm.label].append((time.perf_counter() - t0) * 1e3)
    return {label: statistics.median(ts) for label, ts in times.items()}


def report(work: Workload, labels: list[str], ms: dict[str, float] | None, mem: dict[str, Memory]) -> None:
    """Print one table per model: absolute figures and ratios to PEFT (same dropout) and to the floor."""
    floor = mem["floor"]
    print(f"\n### {work.name}\n")
    print("| arm | ms/step | /PEFT | /floor | saved MB | training MB | total MB | total /PEFT | total /floor "
          "| saved+grads+optim /PEFT |" + (" CUDA peak MB | CUDA /PEFT |" if floor.cuda_peak is not None else ""))
    print("|" + " --- |" * (10 + (2 if floor.cuda_peak is not None else 0)))
    for label in labels:
        m = mem[label]
        peer = "peft@" + label.partition("@")[2] if "@" in label else None
        rel = lambda a, b: f"{a / b:.3f}" if b else "—"  # noqa: E731
        t = f"{ms[label]:.1f}" if ms else "—"
        t_peft = rel(ms[label], ms[peer]) if ms and peer else "—"
        t_floor = rel(ms[label], ms["floor"]) if ms else "—"
        row = (f"| {label} | {t} | {t_peft} | {t_floor} | {m.saved / 2**20:.1f} | {m.training / 2**20:.1f} "
               f"| {m.total / 2**20:.1f} | {rel(m.total, mem[peer].total) if peer else '—'} "
               f"| {rel(m.total, floor.total)} | {rel(m.training, mem[peer].training) if peer else '—'} |")
        if m.cuda_peak is not None:
            row += f" {m.cuda_peak / 2**20:.1f} | {rel(m.cuda_peak, mem[peer].cuda_peak) if peer else '—'} |"
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert,gpt2,resnet,vit")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image", type=int, default=112, help="ResNet input side (pixels)")
    p.add_argument("--rounds", type=int, default=15, help="timed steps per arm (interleaved); 0: memory only")
    p.add_argument("--dropouts", default="0,0.1")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="base weights' dtype (adapters stay float32 in both engines)")
    p.add_argument("--unfused", action="store_true", help="add our op-by-op path (before the fused function)")
    p.add_argument("--nofold", action="store_true",
                   help="add ours without the LoRA update folded into the weight (float32, dropout 0)")
    p.add_argument("--quick", action="store_true", help="hidden 256, 2 layers, seq 64, batch 8, image 64")
    a = p.parse_args()
    if a.quick:
        a.hidden, a.layers, a.seq, a.batch, a.image = 256, 2, 64, 8, 64
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"torch {torch.__version__}, {device}, {a.dtype} base, {torch.get_num_threads()} threads; hidden {a.hidden}, "
          f"{a.layers} layers, seq {a.seq}, batch {a.batch}, ResNet image {a.image}; r={RANK}, alpha={ALPHA}; "
          f"{a.rounds} interleaved rounds, medians")  # fmt: skip
    kinds = ("ours",) + (("unfused",) if a.unfused else ()) + (("nofold",) if a.nofold else ()) + ("peft",)
    labels = ["floor", "full"] + [f"{k}@{d}" for d in a.dropouts.split(",") for k in kinds]
    for name in a.models.split(","):
        work = workloads(a)[name]
        torch.manual_seed(0)
        base = work.build().to(getattr(torch, a.dtype))
        batch = {k: v.to(device) for k, v in work.batch(getattr(torch, a.dtype)).items()}
        arms = [make_arm(label, work, base, device) for label in labels]
        mem = {arm.label: measure_memory(arm, work, batch, device) for arm in arms}
        ms = time_arms(arms, work, batch, a.rounds, device) if a.rounds else None
        report(work, labels, ms, mem)
        del arms


if __name__ == "__main__":
    main()
