"""FSDP2 under ``torchrun``: each process holds a shard of every transformer block (``training.distributed = "fsdp"``).

With DDP every process keeps a whole copy of the model; with FSDP2 (``torch.distributed.fsdp.fully_shard``)
every parameter becomes a ``DTensor`` sharded along its first dimension over the processes, and a block's
weights are all-gathered only while that block runs (forward, and again in backward)::

    rank r holds  [block 0 shard r] [block 1 shard r] ... [root shard r: embeddings, head, final norm]
    forward:      all-gather block 0 -> run -> free | all-gather block 1 -> run -> free | ...
    backward:     all-gather again, gradients reduce-scattered (averaged over processes, as DDP does)

What is sharded (:func:`shard_model`): the model's repeated blocks -- the modules whose class is in
transformers' ``_no_split_modules`` (``GPT2Block``, ``LlamaDecoderLayer``, ...), else the children of its
largest ``nn.ModuleList`` -- one FSDP group each, then the root (whatever is left).  A model with no such
blocks (the digits CNN, a small factory model) is trained as a *single root shard*: correct, but its whole
model is gathered for every forward, so it saves no memory over DDP; the run says so in a warning.

Frozen base weights and trainable LoRA factors live together in one block; FSDP2 shards both and
reduce-scatters only the gradients that exist.  No ``MixedPrecisionPolicy`` cast is set: parameters are
gathered in their stored dtype (LoRA factors stay float32) and the run's autocast computes in its
precision, exactly as a one-process or DDP run does, so FSDP changes where the weights live, not the
numbers.  Buffers (BatchNorm statistics, the NF4 base's packed 4-bit weights) are not sharded: every
process keeps them whole (a QLoRA run says so in a warning; it trains, measured equal to one process).

What cannot run sharded is refused before the model is built (:func:`fsdp_problem`): the variants whose
between-step hooks read or rewrite whole factors (AdaLoRA, pruning, sparse), float16 on CUDA (its loss
scaler would decide to skip a step from one process's gradient shard), bitsandbytes' 8-bit optimizer (its
state is not DTensor-aware).  Saving needs the whole tensors on one process: :func:`full_parameters_on_main`
gathers them (onto rank 0's CPU) for the PEFT adapter folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..layers import adapter_layers
from ..layers.nf4_linear import NF4Linear
from ..run_config import RunConfig
from .distributed import DistContext
from .update_norms import layer_update_norms

# Variants whose between-step hooks (after_optimizer_step, regularization_loss) read or rewrite whole
# factors outside a forward: on DTensor shards they would need collectives nobody issues in step.
_HOOKED_VARIANTS = {
    "adalora": "reallocates ranks between steps from whole factors",
    "pruning": "prunes whole factors between steps",
    "sparse": "re-masks whole factors between steps",
}


def fsdp_problem(config: RunConfig, device: torch.device) -> str | None:
    """Why ``config`` cannot train on ``device`` with ``training.distributed = "fsdp"`` (None: it can),
    naming the fix."""
    t = config.training
    variant = config.lora.variant
    if t.trains_adapter and t.mode == "lora" and variant in _HOOKED_VARIANTS:
        return (f"training.distributed = 'fsdp' cannot train lora.variant = {variant!r}: it "
                f"{_HOOKED_VARIANTS[variant]}, which sharded weights do not allow; use training.distributed = "
                "'ddp' (every process holds the whole model), or another variant")
    if t.precision == "float16" and device.type == "cuda":  # elsewhere the run trains in float32 anyway
        return ("training.distributed = 'fsdp' cannot train with training.precision = 'float16': its loss scaler "
                "would decide to skip a step from this process's gradient shard alone; use training.precision = "
                "'bfloat16' (no loss scaling), or training.distributed = 'ddp'")
    if t.optimizer == "adamw_8bit":
        return ("training.distributed = 'fsdp' cannot use training.optimizer = 'adamw_8bit' (bitsandbytes' state "
                "is not shard-aware); use training.optimizer = 'adamw', or training.distributed = 'ddp'")
    return None


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks, outermost only, in order: each becomes one FSDP group.

    transformers names them (``_no_split_modules``: the modules it never splits across devices); any
    other model's blocks are taken as the children of its largest ``nn.ModuleList`` (by parameters).
    Empty for a model with neither.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in names]
    if not found:
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
        if lists:
            name, largest = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
            found = [(f"{name}.{i}" if name else str(i), child) for i, child in enumerate(largest)]
    outermost: list[tuple[str, nn.Module]] = []
    for name, module in found:
        if not any(name.startswith(f"{outer}.") for outer, _ in outermost):
            outermost.append((name, module))
    return [(n, m) for n, m in outermost if any(True for _ in m.parameters())]


def shard_model(model: nn.Module, dist: DistContext, device: torch.device) -> list[str]:
    """Shard ``model`` in place with FSDP2 over all processes: each block, then the root.

    Returns notes for the run (a model with no blocks is one root shard, which saves no memory).
    After this every parameter is a ``DTensor``; build the optimizer afterwards.  The model's own
    forward does the all-gathers, so every process must call it, the same number of times.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (dist.world_size,))
    blocks, name = transformer_blocks(model), type(model).__name__  # before fully_shard renames the class
    for _, block in reversed(blocks):  # inner groups before the ones that hold them
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    notes = []
    if not blocks:
        notes.append(f"training.distributed = 'fsdp': {name} has no repeated blocks to shard, so "
                     "it is one shard gathered whole for every forward (no memory saved over training.distributed = "
                     "'ddp')")
    if any(isinstance(m, NF4Linear) for m in model.modules()):
        notes.append("training.distributed = 'fsdp': the 4-bit (NF4) base weights are buffers, which FSDP does not "
                     "shard: every process keeps all of them; the adapters and the other weights are sharded")
    return notes


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """This process's shard of a ``DTensor`` (any other tensor as it is)."""
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


@contextlib.contextmanager
def full_parameters_on_main(model: nn.Module, dist: DistContext) -> Iterator[bool]:
    """Give rank 0's ``model`` its whole parameters (on the CPU) for the block; yields whether this is rank 0.

    Every process must enter (the gather is collective).  Inside, rank 0's model holds plain tensors
    that anything reading parameters (``save_adapter``, the base fingerprint, ``state_dict``) can use;
    no forward may run inside.  The sharded parameters are put back on leaving.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        yield False
        return
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    shared: dict[int, nn.Parameter] = {}  # a tied weight (embeddings and head) stays one parameter
    # fully_shard gave each sharded module a class FSDP<Name>(FSDPModule, Name); what is saved names the
    # model's own class (the adapter's base fingerprint, PEFT's task type), so it gets it back meanwhile
    classes = [(m, type(m)) for m in model.modules() if isinstance(m, FSDPModule)]
    try:
        for module, cls in classes:
            module.__class__ = next(base for base in cls.__bases__ if not issubclass(base, FSDPModule))
        for module_name, module in model.named_modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                key = f"{module_name}.{name}" if module_name else name
                if id(param) not in shared:
                    shared[id(param)] = nn.Parameter(full[key], requires_grad=param.requires_grad)
                swapped.append((module, name, param))
                module._parameters[name] = shared[id(param)]
        yield True
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
        for module, cls in classes:
            module.__class__ = cls


def sharded_update_norms(model: nn.Module) -> dict[str, float]:
    """:func:`layer_update_norms` of a sharded model, every process calling it (the same values on each).

    On DTensor shards a norm's ``float()`` reads this process's part only (measured: 1/sqrt(2) of the
    norm with two processes), so each FSDP group is all-gathered in turn (``unshard``, FSDP2's own
    call; one block at a time, never the whole model) and the layers it holds whole are measured.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    layers = list(adapter_layers(model))
    norms: dict[str, float] = {}
    for group in [m for m in model.modules() if isinstance(m, FSDPModule)]:
        group.unshard()
        try:
            for name, layer in layers:
                if name not in norms and not any(isinstance(p, DTensor) for p in layer.parameters()):
                    norms.update({name: value for value in layer_update_norms(layer).values()})
        finally:
            group.reshard()
    return {name: norms[name] for name, _ in layers if name in norms}
