"""Parameter counts and a pre-flight estimate of training memory.

Both read only shapes and flags, so they work on a ``meta``-device model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..layers import AdapterLayer, ModulesToSave
from .config import LoraConfig
from .describe import ModuleInfo, describe
from .target_matching import in_modules_to_save

Precision = Literal["float32", "bfloat16", "float16"]
Optimizer = Literal["adamw", "sgd", "sgd-momentum"]

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}  # float32 tensors kept per trainable parameter


@dataclass(frozen=True)
class ParameterCounts:
    """How many parameters a model holds, and how many of them train."""

    total: int  # every parameter, adapters included, shared tensors once
    trainable: int  # requires_grad
    adapter: int  # LoRA factors and modules-to-save copies

    @property
    def base(self) -> int:
        return self.total - self.adapter

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({self.trainable_percent:.3f}%); "
            f"adapter {self.adapter:,}"
        )


def _adapter_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the adapters' own tensors: every factor, and the trained copies of modules_to_save."""
    adapter_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            adapter_ids.update(id(p) for attr in module.factor_attributes for p in getattr(module, attr).parameters())
        elif isinstance(module, ModulesToSave):
            adapter_ids.update(id(p) for p in module.modules_to_save.parameters())
    return adapter_ids


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Total, trainable and adapter parameter counts of ``model``."""
    adapter_ids = _adapter_parameter_ids(model)
    total = trainable = adapter = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        adapter += n if id(p) in adapter_ids else 0
    return ParameterCounts(total, trainable, adapter)


@dataclass(frozen=True)
class BatchShape:
    """What one micro-batch feeds the model: ``batch`` samples of ``length`` tokens (text) or of
    one ``image`` of (channels, height, width) (pixels).  It sizes the activation term."""

    batch: int
    length: int | None = None  # tokens per sample (text: data.max_length)
    image: tuple[int, int, int] | None = None  # (channels, height, width) (images: data.image_size)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if (self.length is None) == (self.image is None):
            raise ValueError("give exactly one of length (text) or image (pixels)")

    @property
    def positions(self) -> int:
        """Tokens, or pixels, of the whole micro-batch."""
        return self.batch * (self.length if self.length is not None else self.image[1] * self.image[2])


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to train, by component.

    ``activations`` is what autograd keeps for backward at the peak of one micro-batch, plus the
    loss's float copies and backward's largest transient; ``activation_method`` says how it
    was found: ``"traced"`` (a shape-only forward on a meta copy of the model, each layer's saved
    tensors by its type), ``"formula"`` (tokens × output widths, when the model cannot be traced)
    or ``"none"`` (no batch given).
    """

    weights: int  # base weights as stored (NF4 for a QLoRA base) + float32 adapter weights
    gradients: int  # float32 gradients of the trainable parameters
    optimizer_states: int  # e.g. AdamW's two moments, float32
    activations: int  # see the class docstring; 0 if no batch was given
    activation_method: str = "none"

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations

    def __str__(self) -> str:
        mib = 1024**2
        return (
            f"≈ {self.total / mib:,.1f} MiB: weights {self.weights / mib:,.1f}, gradients {self.gradients / mib:,.1f}, "
            f"optimizer {self.optimizer_states / mib:,.1f}, activations {self.activations / mib:,.1f} "
            f"({self.activation_method})"
        )


def estimate_training_memory(
    model: nn.Module,
    config: LoraConfig | None = None,
    *,
    precision: Precision = "float32",
    optimizer: Optimizer = "adamw",
    tokens_per_step: int | None = None,
    batch: BatchShape | None = None,
    tree: ModuleInfo | None = None,
) -> MemoryEstimate:
    """Estimate training memory for ``model`` (with ``config``'s adapter added, when given).

    Weights are counted as stored (their dtype; a QLoRA base's targeted Linear weights in NF4),
    gradients and optimizer states for the trainable parameters only (exact).  ``batch`` gives
    the activation term by tracing shapes on a meta copy (see :class:`MemoryEstimate`; a model the
    trace cannot run falls back to the formula); ``tokens_per_step`` alone (batch × positions)
    gives the formula.  ``precision`` is the compute precision: it sizes the activations.
    ``tree`` is ``describe(model, config)`` when the caller has it already (it is not recomputed).
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_ELEMENT)}; got {precision!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer!r}")
    if tokens_per_step is not None and tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    counts = count_parameters(model)
    adapter, trainable = counts.adapter, counts.trainable
    tree = tree if tree is not None else describe(model, config)
    if config is not None:
        new = adapter_parameter_count(tree, config)
        biases = _bias_parameters(tree, config)
        adapter += new
        trainable = new + biases if counts.adapter == 0 else trainable + new
    weight_bytes = _base_weight_bytes(model, tree, config) + adapter * 4
    activations, method = 0, "none"
    if batch is not None:
        traced = trace_activation_bytes(model, tree, batch, precision, config)
        if traced is not None:
            activations, method = traced, "traced"
        else:
            tokens_per_step = batch.positions
    if method == "none" and tokens_per_step:
        widths = sum(_output_width(node) for node in tree.walk() if node.can_wrap)
        activations, method = tokens_per_step * widths * BYTES_PER_ELEMENT[precision], "formula"
    return MemoryEstimate(
        weights=weight_bytes,
        gradients=trainable * 4,
        optimizer_states=trainable * 4 * OPTIMIZER_STATES[optimizer],
        activations=activations,
        activation_method=method,
    )


def nf4_bytes(numel: int, block_size: int = 64, double_quant: bool = True, double_quant_block_size: int = 256) -> int:
    """Bytes an NF4 weight of ``numel`` values is stored in (``core/layers/nf4_format.py``, bitsandbytes'
    layout): two 4-bit indices per byte, plus one float32 absmax per block, or with double
    quantisation one 8-bit code per block, one float32 scale per ``double_quant_block_size`` blocks and a mean."""
    blocks = -(-numel // block_size)
    packed = -(-numel // 2)
    if not double_quant:
        return packed + blocks * 4
    return packed + blocks + 4 * -(-blocks // double_quant_block_size) + 4


def _base_weight_bytes(model: nn.Module, tree: ModuleInfo, config: LoraConfig | None) -> int:
    """The base's parameters and buffers in their stored dtype; QLoRA's targeted Linear weights in NF4."""
    adapter_ids = _adapter_parameter_ids(model)
    quantised: dict[int, int] = {}
    if config is not None and config.variant == "qlora":
        settings = config.settings()
        modules = dict(model.named_modules())
        for node in tree.walk():
            layer = modules.get(node.name)
            if node.targeted and isinstance(layer, nn.Linear):
                quantised[id(layer.weight)] = nf4_bytes(
                    layer.weight.numel(), settings.block_size, settings.double_quant, settings.double_quant_block_size
                )
    total = 0
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or id(t) in adapter_ids:
            continue
        seen.add(id(t))
        total += quantised.get(id(t), t.numel() * t.element_size())
    return total


# Activation model, per leaf module type: what autograd saves for backward in a LoRA run (frozen
# base, gradients flowing through it).  A frozen Linear/Conv/Embedding saves nothing (its input is
# needed only for its own weight's gradient); an adapted one keeps its input and the rank-r
# intermediate; a norm or an activation function keeps its input; dropout keeps a one-byte mask;
# max pooling its input and int64 indices.  Attention's functional part (scaled-dot-product) keeps
# q, k, v and its output, and with attention dropout the probabilities and their mask.
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
_KEEPS_INPUT_NAMES = ("Norm", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "Mish", "ELU", "Hardswish")
TRANSIENT_FACTOR = 2  # backward holds a gradient of the largest activation beside it, and its producer's


def trace_activation_bytes(
    model: nn.Module, tree: ModuleInfo, batch: BatchShape, precision: Precision = "float32",
    config: LoraConfig | None = None,
) -> int | None:
    """Activation bytes of one micro-batch of shape ``batch``, by a forward on a meta-device copy of
    ``model`` (nothing is computed or allocated), each leaf layer's saved tensors by its type.

    None when the model cannot be run that way (a data-dependent forward, an input it refuses).
    """
    element = BYTES_PER_ELEMENT[precision]
    targeted = {node.name: node for node in tree.walk() if node.targeted}
    try:
        twin = _meta_twin(model)
    except Exception:  # noqa: BLE001 - a module that cannot be deep-copied: the formula instead
        return None
    dropout = float(config.dropout) if config is not None else 0.0
    trained_fully = {node.name for node in tree.walk() if config is not None and _outermost_saved(node.name, config)}
    # Kept tensors by identity (the tensor held, so no id is reused): an adapted conv's input that a
    # ReLU in place already keeps counts once.  Fresh tensors (masks, indices) get their own keys.
    kept: dict[object, tuple[object, int]] = {}
    largest = [0]
    handles = []

    def numel(x) -> int:
        return x.numel() if isinstance(x, torch.Tensor) else 0

    def keep(tensor, nbytes: int) -> None:
        if isinstance(tensor, torch.Tensor):
            kept[id(tensor)] = (tensor, nbytes)

    def keep_new(nbytes: int) -> None:
        kept[("new", len(kept))] = (None, nbytes)

    def leaf_hook(name: str):
        def hook(module: nn.Module, args, output) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            out = output[0] if isinstance(output, tuple) else output
            x_in, x_out = numel(x), numel(out)
            largest[0] = max(largest[0], x_out * element)
            type_name = type(module).__name__
            if name in targeted:
                positions = max(x_out // max(_output_width(targeted[name]) or 1, 1), 1)
                keep(x, x_in * element)
                keep_new(positions * (targeted[name].rank or 0) * element)  # the rank-r intermediate
                if dropout > 0:
                    keep_new(x_in * (element + 1))  # the dropped copy of the input, and its mask
            elif any(name == s or name.startswith(s + ".") for s in trained_fully):
                keep(x, x_in * element)  # a module trained fully keeps its input
            elif isinstance(module, _WEIGHTED):
                pass
            elif isinstance(module, nn.Dropout):
                keep_new(x_out if module.p > 0 else 0)
            elif isinstance(module, nn.ReLU):
                keep(out, x_out * element)  # its result; in place, the input's own storage
            elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
                keep(x, x_in * element)
                keep_new(x_out * 8)  # int64 indices
            elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity)):
                pass
            elif any(key in type_name for key in _KEEPS_INPUT_NAMES):
                keep(x, x_in * element)
            else:
                keep(out, x_out * element)
        return hook

    def attention_hook(module: nn.Module, args, output) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or x.dim() != 3:
            return
        tokens, width = x.shape[0] * x.shape[1], x.shape[2]
        heads = _attention_heads(module) or 1
        keep_new(4 * tokens * width * element)  # q, k, v and the attention output
        if _attention_dropout(module) > 0:
            keep_new(tokens * x.shape[1] * heads * (element + 1))  # probabilities and their mask

    names = {id(m): n for n, m in twin.named_modules()}
    for module in twin.modules():
        name = names[id(module)]
        if not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(leaf_hook(name)))
        elif type(module).__name__.endswith(("SelfAttention", "Attention")) and not any(
            type(m).__name__.endswith(("SelfAttention", "Attention")) for m in module.children()
        ):
            handles.append(module.register_forward_hook(attention_hook))
    try:
        with torch.no_grad():
            output = _meta_forward(twin, batch)
    except Exception:  # noqa: BLE001 - a data-dependent forward or a refused input: no trace
        return None
    finally:
        for h in handles:
            h.remove()
    logits = output.logits if hasattr(output, "logits") else output
    loss = numel(logits) * 4 * 2 if isinstance(logits, torch.Tensor) else 0  # float copy + log-softmax, kept
    return sum(n for _, n in kept.values()) + loss + TRANSIENT_FACTOR * largest[0]


def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device, adapters unwrapped to their base layers."""
    memo: dict[int, object] = {}
    for t in [*model.parameters(), *model.buffers()]:
        memo[id(t)] = torch.empty_like(t, device="meta")
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(memo[id(p)], p.requires_grad)
    twin = copy.deepcopy(model, memo)
    for name, module in list(twin.named_modules()):
        if isinstance(module, AdapterLayer) and name:
            twin.set_submodule(name, module.base_layer)
        elif isinstance(module, ModulesToSave) and name:
            twin.set_submodule(name, module.original_module)
    twin.train()
    return twin


def _meta_forward(model: nn.Module, batch: BatchShape):
    if batch.length is not None:
        ids = torch.zeros(batch.batch, batch.length, dtype=torch.long, device="meta")
        # No attention mask: building one reads its values (impossible on meta); the shapes are the same.
        return model(input_ids=ids)
    channels, height, width = batch.image
    return model(torch.zeros(batch.batch, channels, height, width, device="meta"))


def _attention_heads(module: nn.Module) -> int | None:
    for holder in (module, getattr(module, "config", None)):
        for key in ("num_attention_heads", "num_heads", "n_head", "n_heads"):
            value = getattr(holder, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _attention_dropout(module: nn.Module) -> float:
    for key in ("attention_dropout", "attn_dropout", "dropout", "dropout_prob"):
        value = getattr(module, key, None)
        if isinstance(value, nn.Dropout):
            return value.p
        if isinstance(value, float):
            return value
    config = getattr(module, "config", None)
    for key in ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"):
        value = getattr(config, key, None)
        if isinstance(value, float):
            return value
    return 0.0


def adapter_parameter_count(tree: ModuleInfo, config: LoraConfig) -> int:
    """Parameters ``config``'s adapter adds to the model ``tree`` describes (``describe(model, config)``):
    its new factors plus the trained copies of its ``modules_to_save``, which the adapter file holds too.

    A module trained fully counts once, at its outermost saved module (what ``attach`` copies).
    """
    added = sum(node.added_parameters for node in tree.walk())
    saved = sum(node.total_parameters for node in tree.walk() if _outermost_saved(node.name, config))
    return added + saved


def _outermost_saved(name: str, config: LoraConfig) -> bool:
    return in_modules_to_save(config, name) and not in_modules_to_save(config, name.rpartition(".")[0])


def _bias_parameters(tree, config: LoraConfig) -> int:
    if config.bias == "none":
        return 0
    return sum(
        p.numel
        for node in tree.walk()
        if config.bias == "all" or node.targeted
        for p in node.parameters
        if p.name.startswith("bias")
    )


def _output_width(node) -> int:
    weight = next((p for p in node.parameters if p.name in ("weight", "in_proj_weight", "weight_ih")), None)
    if weight is None:
        return 0
    if node.type_name == "Conv1D":  # stored (in, out)
        return weight.shape[-1]
    if node.type_name == "Embedding":
        return weight.shape[1]
    return weight.shape[0]
