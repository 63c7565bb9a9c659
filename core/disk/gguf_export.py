"""GGUF files llama.cpp (and Ollama, LM Studio…) load: a merged model, or a LoRA adapter.

Written with the ``gguf`` package (the llama.cpp project's own writer and reader), never with a
local llama.cpp build.  Only the pieces of llama.cpp's ``convert_hf_to_gguf.py`` /
``convert_lora_to_gguf.py`` conventions these architectures need are restated here: tensor names
come from ``gguf``'s own name map; GPT-2's Conv1D weights are stored ``(in, out)`` and GGUF wants
``(out, in)``, so they are transposed; Llama's q/k projections are permuted row-wise into the
interleaved rotary layout llama.cpp expects; 1-D tensors (norms, biases) stay float32, as the
converter keeps them.

* **Merged model**: the live model with its adapter merged (:func:`~.merged_export.merged_copy`,
  the same merge every other export uses), its hyper-parameters, and a byte-level BPE tokenizer
  (``tokenizer.ggml.model = "gpt2"``: GPT-2, Llama-3-style).  Other tokenizers are refused by name.
* **Adapter** (``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha``):
  ``<weight name>.lora_a`` ``(r, in)`` and ``.lora_b`` ``(out, r)`` per adapted weight.  llama.cpp
  scales every layer by ``alpha / r`` of that layer; the studio's per-layer scale (rank and alpha
  patterns, rsLoRA) is folded into ``lora_b`` so the file computes exactly the studio's update.

Precisions: ``f32``, ``f16``, ``bf16`` and ``q8_0`` (blocks of 32 along the row; a tensor whose
rows do not split into such blocks is written ``f16``, as the converter falls back).  Only
architectures listed in :data:`GGUF_ARCHITECTURES` are written; others are refused by name.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapter.lifecycle import active_adapter, adapted_root, adapter_state
from ..layers import LinearLora, adapter_layers
from .atomic_files import atomic_path
from .merged_export import merged_copy

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
#: The largest difference :func:`verify_gguf` may find per stored type, relative to each tensor's largest
#: magnitude: the type's own rounding (f16: 2^-11 relative, doubled for values near a power of two;
#: bf16: 2^-8, likewise; q8_0: half a 1/127 step, plus its f16 scale's rounding).
GGUF_TOLERANCE = {"f32": 1e-6, "f16": 2.0**-10, "bf16": 2.0**-7, "q8_0": 1 / 127}
GGUF_ARCHITECTURES = ("gpt2", "llama")
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


@dataclass(frozen=True)
class GGUFResult:
    """What a GGUF export wrote."""

    path: Path
    architecture: str
    kind: str  # "model" or "adapter"
    precision: str
    tensors: int


def export_gguf(model: nn.Module, path: str | Path, tokenizer: Any, *, precision: str = "f16") -> GGUFResult:
    """Write ``model`` (its active adapter merged) as a llama.cpp GGUF model file at ``path``."""
    config = _architecture_config(model)
    _check_precision(precision)
    tensors = _named_model_tensors(model, config)
    with _writer(path, config.model_type) as writer:
        _write_hyperparameters(writer, config, precision)
        _write_tokenizer(writer, tokenizer, config)
        for gguf_name, tensor in tensors.items():
            _add_tensor(writer, gguf_name, tensor, precision)
    return GGUFResult(Path(path), config.model_type, "model", precision, len(tensors))


def export_gguf_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None, *,
                        precision: str = "f32") -> GGUFResult:
    """Write LoRA adapter ``adapter_name`` (default: the active one) of ``model`` as a llama.cpp adapter."""
    import gguf

    config = _architecture_config(model)
    _check_precision(precision)
    alpha, factors = _adapter_factors(model, config, adapter_name)
    with _writer(path, config.model_type) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for gguf_name, a, b, scaling in factors:
            # llama.cpp scales by alpha / r of this tensor: fold the layer's own scale into B.
            _add_tensor(writer, f"{gguf_name}.lora_a", a.contiguous(), precision)
            _add_tensor(writer, f"{gguf_name}.lora_b", (b * (scaling * a.shape[0] / alpha)).contiguous(), precision)
    return GGUFResult(Path(path), config.model_type, "adapter", precision, 2 * len(factors))


def gguf_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be written as GGUF (its architecture), or None when it can."""
    try:
        _architecture_config(model)
    except ValueError as exc:
        return str(exc)
    return None


def verify_gguf(result: GGUFResult, model: nn.Module, adapter_name: str | None = None) -> float:
    """Read ``result``'s file back with ``gguf``'s reader and return the largest difference from what
    it should hold, relative to each tensor's largest magnitude (0 for an exact ``f32`` file).

    A model file is compared with ``model``'s merged weights in llama.cpp's layout; an adapter file's
    ``alpha / r · lora_b @ lora_a`` with the live adapter's own update, layer by layer.
    """
    import gguf

    reader = gguf.GGUFReader(str(result.path))
    stored = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        tuple(int(d) for d in reversed(t.shape)))) for t in reader.tensors}
    config = _architecture_config(model)
    if result.kind == "model":
        expected = _named_model_tensors(model, config)
    else:
        alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
        expected = {}
        for gguf_name, a, b, scaling in _adapter_factors(model, config, adapter_name)[1]:
            a_file, b_file = stored[f"{gguf_name}.lora_a"], stored[f"{gguf_name}.lora_b"]
            stored[gguf_name] = alpha / a_file.shape[0] * b_file @ a_file  # what llama.cpp adds
            expected[gguf_name] = scaling * b @ a
    if set(expected) - set(stored):
        raise ValueError(f"{result.path} lacks tensors {sorted(set(expected) - set(stored))[:3]}; export it again")
    worst = 0.0
    for name, value in expected.items():
        scale = float(value.abs().max()) or 1.0
        worst = max(worst, float((stored[name] - value).abs().max()) / scale)
    return worst


def _named_model_tensors(model: nn.Module, config: Any) -> dict[str, torch.Tensor]:
    """The merged model's tensors by their llama.cpp names, in llama.cpp's layout."""
    import gguf

    names = gguf.get_tensor_name_map(_gguf_arch(config.model_type), _block_count(config))
    out = {}
    for name, tensor in _model_tensors(merged_copy(model, precision="float32", share_frozen=True).state_dict(),
                                       config):
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"GGUF export: no llama.cpp name for tensor {name!r} of this "
                             f"{config.model_type} model; export a safetensors model instead")
        out[gguf_name] = tensor
    return out


def _adapter_factors(model: nn.Module, config: Any, adapter_name: str | None
                     ) -> tuple[float, list[tuple[str, torch.Tensor, torch.Tensor, float]]]:
    """The adapter's alpha and, per adapted weight, (llama.cpp name, A, B in llama.cpp's row order, the
    layer's own scale); what llama.cpp cannot hold is refused by name."""
    import gguf

    root = adapted_root(model)
    state = adapter_state(root) if root is not None else None
    if state is None:
        raise ValueError("GGUF adapter export: the model carries no adapter")
    adapter_name = adapter_name or active_adapter(root)
    lora = state.configs[adapter_name]
    if lora.variant not in ("lora", "lora_plus"):
        raise ValueError(f"GGUF adapter export: llama.cpp's adapters are plain LoRA; adapter {adapter_name!r} uses "
                         f"variant {lora.variant!r}. Export a merged GGUF model instead")
    names = gguf.get_tensor_name_map(_gguf_arch(config.model_type), _block_count(config))
    prefix, factors = _prefix_of(model, root), []
    for layer_name, layer in adapter_layers(root):
        if adapter_name not in layer.adapter_names:
            continue
        if not isinstance(layer, LinearLora):
            raise ValueError(f"GGUF adapter export: layer {layer_name!r} is a {type(layer.base_layer).__name__}; "
                             "llama.cpp's adapters hold linear layers only. Export a merged GGUF model instead")
        weight_name = f"{prefix}{layer_name}.weight"
        gguf_name = names.get_name(weight_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"GGUF adapter export: llama.cpp has no name for layer {layer_name!r}; "
                             "leave it out of the targets or export a merged GGUF model")
        a, b = (t.detach().float().cpu() for t in layer.stored_factors(adapter_name, "weight"))
        factors.append((gguf_name, a, _rotary_rows(b, weight_name, config), float(layer.scaling[adapter_name])))
    if not factors:
        raise ValueError(f"GGUF adapter export: adapter {adapter_name!r} adapts no layer")
    return float(lora.alpha), factors


# -- architectures ----------------------------------------------------------------------------------
def _gguf_arch(model_type: str) -> Any:
    import gguf

    return {"gpt2": gguf.MODEL_ARCH.GPT2, "llama": gguf.MODEL_ARCH.LLAMA}[model_type]


def _architecture_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        what = f"a {model_type!r} transformers model" if model_type else f"a {type(model).__name__} (not transformers)"
        raise ValueError(f"GGUF export writes the architectures {', '.join(GGUF_ARCHITECTURES)}; this is {what}. "
                         "Export a safetensors model or a transformers folder instead")
    return config


def _check_precision(precision: str) -> None:
    if precision not in GGUF_TYPES:
        raise ValueError(f"GGUF precision must be one of {', '.join(GGUF_TYPES)}, got {precision!r}")


def _block_count(config: Any) -> int:
    return int(config.n_layer if config.model_type == "gpt2" else config.num_hidden_layers)


def _prefix_of(model: nn.Module, root: nn.Module) -> str:
    """The state-dict prefix of the adapted module inside ``model`` ('' when it is the model)."""
    for name, module in model.named_modules():
        if module is root:
            return f"{name}." if name else ""
    return ""


def _model_tensors(state: dict[str, torch.Tensor], config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged model's tensors as the converter writes them (names still transformers')."""
    tied = bool(getattr(config, "tie_word_embeddings", True))
    for name, tensor in state.items():
        tensor = tensor.detach().float().cpu()
        if config.model_type == "gpt2":
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue  # causal-mask buffers; GPT-2's head is its token embedding (written as output below)
            if name.endswith(_GPT2_CONV1D):
                tensor = tensor.T
            yield name, tensor.contiguous()
            if name.endswith("wte.weight"):
                yield "lm_head.weight", tensor.contiguous()
        else:
            if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                continue  # recomputed by llama.cpp; a tied head is read from the token embedding
            yield name, _rotary_rows(tensor, name, config).contiguous()


def _rotary_rows(tensor: torch.Tensor, name: str, config: Any) -> torch.Tensor:
    """Llama's q/k rows (weights, biases, a LoRA B) reordered as llama.cpp's rotary layout wants
    (other architectures' tensors as they are)."""
    if config.model_type != "llama":
        return tensor
    heads = int(config.num_attention_heads)
    if ".q_proj." in name:
        return _permute(tensor, heads)
    if ".k_proj." in name:
        return _permute(tensor, int(getattr(config, "num_key_value_heads", None) or heads))
    return tensor


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


# -- writing ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _writer(path: str | Path, arch: str) -> Iterator[Any]:
    """A GGUF writer on a temporary file that replaces ``path`` only when it is complete."""
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            yield writer
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def _file_type(precision: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[precision]


def _write_hyperparameters(writer: Any, config: Any, precision: str) -> None:
    writer.add_name(str(getattr(config, "_name_or_path", "") or config.model_type))
    writer.add_file_type(_file_type(precision))
    if config.model_type == "gpt2":
        writer.add_context_length(int(config.n_positions))
        writer.add_embedding_length(int(config.n_embd))
        writer.add_feed_forward_length(int(config.n_inner or 4 * config.n_embd))
        writer.add_block_count(int(config.n_layer))
        writer.add_head_count(int(config.n_head))
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))
        return
    heads = int(config.num_attention_heads)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(int(getattr(config, "head_dim", None) or config.hidden_size // heads))
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if theta:
        writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(int(config.vocab_size))


def _write_tokenizer(writer: Any, tokenizer: Any, config: Any) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" tokenizer model; others refused by name."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("GGUF export needs the model's fast tokenizer (tokenizer.json) to write its vocabulary")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("pre_tokenizer") or {}).get(
            "type") not in ("ByteLevel", "Sequence"):
        raise ValueError("GGUF export writes byte-level BPE tokenizers (GPT-2, Llama-3 style); this tokenizer is "
                         f"{model.get('type')!r}{' with byte fallback' if model.get('byte_fallback') else ''}. "
                         "Export a transformers folder and convert it with llama.cpp's convert_hf_to_gguf.py")
    vocab = tokenizer.get_vocab()
    size = max(int(config.vocab_size), max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    special = set(getattr(tokenizer, "all_special_ids", []))
    added = {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = (gguf.TokenType.CONTROL if index in special else
                        gguf.TokenType.USER_DEFINED if index in added else gguf.TokenType.NORMAL)
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if config.model_type == "gpt2" else "llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for setter, value in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id)):
        if value is not None:
            setter(int(value))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _add_tensor(writer: Any, name: str, tensor: torch.Tensor, precision: str) -> None:
    import gguf

    data = tensor.numpy().astype(np.float32)
    if data.ndim <= 1 or precision == "f32":
        writer.add_tensor(name, data)
        return
    if precision == "f16" or (precision == "q8_0" and data.shape[-1] % 32):
        writer.add_tensor(name, data.astype(np.float16))
        return
    kind = gguf.GGMLQuantizationType.BF16 if precision == "bf16" else gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)


__all__ = ["GGUF_ARCHITECTURES", "GGUF_TOLERANCE", "GGUF_TYPES", "GGUFResult", "export_gguf", "export_gguf_adapter",
           "gguf_problem", "verify_gguf"]
