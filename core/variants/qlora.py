"""QLoRA: LoRA over a frozen base stored in 4-bit NormalFloat (Dettmers et al. 2023, arXiv:2305.14314).

Each adapted linear layer's base is replaced, when its first QLoRA adapter is initialised,
by an :class:`~lora_studio.core.layers.nf4_linear.NF4Linear` (NF4 block-wise quantisation with
optional double quantisation of the scales, section 3); adapters stay in full precision
and train as in LoRA (section 3, "QLoRA")::

    before           LinearLora(base_layer=Linear  W float32)
    after attach     LinearLora(base_layer=NF4Linear  packed 4-bit W, absmax)  + A, B (float32)
    after merge      LinearLora(base_layer=Linear  W' + s·B·A in merge_dtype)   NF4 kept aside
    after unmerge    LinearLora(base_layer=NF4Linear)   the very same 4-bit tensors: exact

Merging therefore produces a *higher-precision* layer (float32 by default); it is never
written back into 4 bits unless ``requantize_after_merge`` says so, and then a warning
states the error that re-quantising added.  Quantising a base is the one change QLoRA makes
to a model that unloading does not undo: the float weights are gone, as the paper intends.
"""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..layers import AdapterBehaviour, AdapterLayer, LinearLora, NonFiniteDeltaError
from ..layers.linear import is_transformers_conv1d
from ..layers.nf4_linear import NF4Linear
from .registry import Variant, register_variant

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Significand bits: what "higher precision" means when two float dtypes meet in a merge.
_PRECISION = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
_STASH = "_qlora_quantised_base"  # the NF4 base kept aside while a merge holds a float layer


def _power_of_two(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high and value & (value - 1) == 0


@dataclass(frozen=True)
class QLoraSettings:
    """How the base is quantised, computed with, and merged."""

    block_size: int = field(
        default=64, metadata={"help": "Weights per NF4 block sharing one absmax scale (paper: 64); a power of two."}
    )
    double_quant: bool = field(
        default=True, metadata={"help": "Quantise the absmax scales again to 8-bit floats (saves ~0.37 bit/weight)."}
    )
    double_quant_block_size: int = field(
        default=256, metadata={"help": "Scales per block in the second quantisation (paper: 256); a power of two."}
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = field(
        default="auto",
        metadata={"help": "Dtype the weight is dequantised to for each product; 'auto': the base's own dtype."},
    )
    merge_dtype: Literal["float32", "float64", "bfloat16", "float16"] = field(
        default="float32",
        metadata={"help": "Dtype of the merged layer; a merge never stores less precision than this."},
    )
    requantize_after_merge: bool = field(
        default=False,
        metadata={"help": "Store the merged weight in NF4 again (lossy; the added error is reported as a warning)."},
    )
    use_bitsandbytes: bool = field(
        default=True,
        metadata={"help": "Use bitsandbytes' CUDA kernel when it is installed and the model is on a GPU."},
    )

    def __post_init__(self) -> None:
        if not _power_of_two(self.block_size, 16, 4096):
            raise ValueError(f"block_size must be a power of two from 16 to 4096, got {self.block_size!r}")
        if not _power_of_two(self.double_quant_block_size, 16, 4096):
            raise ValueError(
                f"double_quant_block_size must be a power of two from 16 to 4096, got {self.double_quant_block_size!r}"
            )
        hints = typing.get_type_hints(QLoraSettings)
        for name in ("double_quant", "requantize_after_merge", "use_bitsandbytes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("compute_dtype", "merge_dtype"):
            choices = typing.get_args(hints[name])
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")


def _quantised_base(layer: AdapterLayer) -> NF4Linear | None:
    """The layer's NF4 base: the live one, or the one kept aside while merged."""
    base = layer.base_layer
    return base if isinstance(base, NF4Linear) else layer.__dict__.get(_STASH)


class QLoraBehaviour(AdapterBehaviour):
    """Plain LoRA factors over an NF4 base; merge swaps in a float layer, unmerge swaps the NF4 one back."""
    update_form = "own"  # the update against the dequantised base
    merge_is_per_slot = False

    merges_through_slots = False  # merge replaces the whole base layer

    def __init__(self, settings: QLoraSettings) -> None:
        self.settings = settings

    # -- parameters ------------------------------------------------------------------------------
    def create(self, layer: AdapterLayer, adapter: str, r: int) -> None:
        nf4 = _quantised_base(layer)
        if nf4 is None:
            layer.create_factors(adapter, r)  # float base: LoRA's own factors, dtype and device
            return
        # An NF4 base may have no float parameter to take a dtype from: full precision, on its device.
        dtype = torch.float64 if nf4.compute_dtype == torch.float64 else torch.float32
        kw = {"bias": False, "device": nf4.weight_packed.device, "dtype": dtype}
        layer.lora_A[adapter] = nn.Linear(layer.in_features, r, **kw)
        layer.lora_B[adapter] = nn.Linear(r, layer.out_features, **kw)

    def initialise(self, layer: AdapterLayer, adapter: str, init: str, untie: frozenset[str]) -> None:
        """LoRA's initialisation (B = 0: the adapter starts as the quantised base), then quantise the base."""
        super().initialise(layer, adapter, init, untie)
        if _quantised_base(layer) is None:
            self._quantise(layer)

    def _quantise(self, layer: AdapterLayer) -> None:
        s = self.settings
        base = layer.base_layer
        compute = base.weight.dtype if s.compute_dtype == "auto" else _DTYPES[s.compute_dtype]
        layer.base_layer = NF4Linear.from_float(
            base, block_size=s.block_size, double_quant=s.double_quant,
            double_quant_block_size=s.double_quant_block_size, compute_dtype=compute,
            use_bitsandbytes=s.use_bitsandbytes,
        )  # fmt: skip
        layer.fan_in_fan_out = False  # NF4Linear keeps (out, in) whatever the source layout was

    # -- the update -------------------------------------------------------------------------------
    def delta_weight(self, layer: AdapterLayer, adapter: str, key: str) -> torch.Tensor:
        # Laid out from the wrapper's flag, not the base weight's shape, which would dequantise it all.
        a, b = self.factors(layer, adapter, key)
        product = (b.float() @ a.float()) * layer.scaling[adapter]
        return product.t() if layer.fan_in_fan_out else product

    # -- merging -------------------------------------------------------------------------------------
    def merge(self, layer: AdapterLayer, adapter: str, untie: frozenset[str]) -> None:
        """Dequantise, add the update in float32, and store a float layer (or NF4 again if asked)."""
        delta = _as_matrix(layer, self.delta_weight(layer, adapter, "weight"))
        merged = _current_matrix(layer) + delta
        if not torch.isfinite(merged).all():
            raise NonFiniteDeltaError(
                f"refusing to merge adapter {adapter!r}: its update holds NaN or Inf; the base was left untouched"
            )
        if isinstance(layer.base_layer, NF4Linear) and _STASH not in layer.__dict__:
            layer.__dict__[_STASH] = layer.base_layer  # a plain attribute: not a sub-module, not in state_dict
        self._store(layer, merged)

    def unmerge(self, layer: AdapterLayer, adapter: str) -> None:
        """The last update out restores the kept NF4 tensors exactly; earlier ones are subtracted in float."""
        stash = layer.__dict__.get(_STASH)
        if stash is not None and layer.merged_adapters == [adapter]:
            device = next(iter(layer.adapter_parameters(adapter))).device
            layer.base_layer = stash.to(device)  # follows the model if it moved while merged
            del layer.__dict__[_STASH]
            layer.fan_in_fan_out = False
            return
        delta = _as_matrix(layer, self.delta_weight(layer, adapter, "weight"))
        self._store(layer, _current_matrix(layer) - delta)

    def _store(self, layer: AdapterLayer, matrix: torch.Tensor) -> None:
        """Make ``matrix`` (out, in) the base: NF4 when re-quantising, else a float layer of merge_dtype or better."""
        nf4 = _quantised_base(layer)
        if self.settings.requantize_after_merge:
            new = NF4Linear.from_weight(
                matrix, nf4.bias, block_size=nf4.layout.block_size, double_quant=nf4.layout.double_quant,
                double_quant_block_size=nf4.layout.double_quant_block_size, compute_dtype=nf4.compute_dtype,
                source_dtype=nf4.source_dtype, source_kind=nf4.source_kind, use_bitsandbytes=nf4.use_bitsandbytes,
                quant_type=nf4.layout.quant_type,
            )  # fmt: skip
            error = (new.dequantized_weight(torch.float32) - matrix).abs().max().item()
            warnings.warn(
                f"requantize_after_merge: the merged weight was stored in NF4 again, adding up to {error:.3g} "
                "absolute error per weight; set it off to keep a float layer",
                stacklevel=4,
            )
            layer.base_layer = new
            layer.fan_in_fan_out = False
            return
        dtype = _DTYPES[self.settings.merge_dtype]
        current = layer.base_layer
        if not isinstance(current, NF4Linear) and _PRECISION[current.weight.dtype] > _PRECISION[dtype]:
            dtype = current.weight.dtype  # another adapter's merge already holds more precision: keep it
        layer.base_layer = nf4.to_float_module(matrix, dtype)
        layer.fan_in_fan_out = is_transformers_conv1d(layer.base_layer)


def _current_matrix(layer: AdapterLayer) -> torch.Tensor:
    """The base weight as an (out, in) float32 matrix, whatever holds it now."""
    base = layer.base_layer
    if isinstance(base, NF4Linear):
        return base.dequantized_weight(torch.float32)
    weight = base.weight.detach().float()
    return weight.t() if is_transformers_conv1d(base) else weight


def _as_matrix(layer: AdapterLayer, delta: torch.Tensor) -> torch.Tensor:
    """A delta in the base's current layout as (out, in)."""
    return delta.t() if layer.fan_in_fan_out else delta


# -- the memory report ---------------------------------------------------------------------------
def quantised_memory(model: nn.Module) -> dict[str, Any]:
    """Bytes of every NF4 base weight in ``model`` against the same weights in float32 and their source dtype.

    Counts the packed 4-bit tensors and their scales (every buffer of the layer); biases are not
    quantised and are left out of both sides.
    """
    layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
    for module in model.modules():
        stash = module.__dict__.get(_STASH)
        if stash is not None:
            layers.append(stash)
    nf4 = sum(m.quantised_bytes() for m in layers)
    fp32 = sum(m.float_bytes(torch.float32) for m in layers)
    source = sum(m.float_bytes(m.source_dtype) for m in layers)
    return {
        "quantised_layers": len(layers),
        "base_weight_bytes_nf4": nf4,
        "base_weight_bytes_float32": fp32,
        "base_weight_bytes_source_dtype": source,
        "nf4_over_float32": nf4 / fp32 if fp32 else None,
        "nf4_over_source_dtype": nf4 / source if source else None,
    }


class QLora(Variant):
    name = "qlora"
    title = "QLoRA"
    description = (
        "LoRA over a frozen base stored in 4-bit NormalFloat (NF4): each adapted linear layer's weights are "
        "quantised in blocks of 64 with one absmax scale per block (the scales optionally quantised again), "
        "and dequantised on the fly for every product, while the adapters train in full precision. The base "
        "takes about an eighth of its float32 memory. Merging dequantises and adds the update into a float32 "
        "layer (never back to 4 bits unless asked); unmerging restores the 4-bit base exactly. Uses "
        "bitsandbytes' CUDA kernel when it is installed and the model is on a GPU, plain PyTorch otherwise."
    )
    paper = (
        "Dettmers, Pagnoni, Holtzman, Zettlemoyer, 'QLoRA: Efficient Finetuning of Quantized LLMs', "
        "NeurIPS 2023 (arXiv:2305.14314)"
    )
    merge_note = (
        "merging dequantises the NF4 base and stores base + update as a float layer in merge_dtype (float32 by "
        "default); with requantize_after_merge the result is stored in NF4 again and the added error is reported"
    )
    settings_class = QLoraSettings
    adapts_quantised_base = True
    peft_type = "LORA"  # the adapter is plain LoRA; PEFT pairs it with a 4-bit base the same way

    def unsupported_reason(self, layer: AdapterLayer) -> str | None:
        if not isinstance(layer, LinearLora):
            return (
                "QLoRA quantises linear layers only (nn.Linear and GPT-2's Conv1D, as the paper does); "
                "adapt this layer with another variant or leave it out of targets"
            )
        others = sorted({type(b).__name__ for b in layer.behaviours.values() if not isinstance(b, QLoraBehaviour)})
        if others:
            return (
                "this layer already carries adapters of another variant on its float base; QLoRA would quantise "
                "the base under them. Attach QLoRA first, or to a fresh model"
            )
        if not isinstance(layer.base_layer, NF4Linear) and not layer.base_layer.weight.is_floating_point():
            return "its weight is not a float tensor, so there is nothing to quantise to NF4"
        return None

    def behaviour(self, layer: AdapterLayer, settings: QLoraSettings) -> QLoraBehaviour:
        return QLoraBehaviour(settings)

    def prepare_model(self, model: nn.Module, targets: list[str], settings: QLoraSettings) -> None:
        """Refuse tied weights before anything changes: quantising one user of a shared weight would untie it."""
        counts: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        for name in targets:
            module = model.get_submodule(name)
            base = getattr(module, "base_layer", module)
            weight = base.__dict__.get("_parameters", {}).get("weight")
            if weight is not None and counts.get(id(weight), 0) > 1:
                raise ValueError(
                    f"variant 'qlora' cannot adapt layer {name!r}: its weight is shared with another module (tied "
                    "weights, e.g. an output head tied to the embeddings); quantising it would untie them. Leave it "
                    "out of targets"
                )

    def summary(self, model: nn.Module, adapter: str, settings: QLoraSettings) -> dict[str, Any]:
        """Memory of the quantised base against float32 and the source dtype, and which kernel ran."""
        report = quantised_memory(model)
        report["bitsandbytes_kernel"] = any(m.uses_bitsandbytes for m in model.modules() if isinstance(m, NF4Linear))
        return report


register_variant(QLora())
