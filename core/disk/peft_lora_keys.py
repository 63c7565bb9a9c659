"""Every key of PEFT's ``LoraConfig`` (``adapter_config.json``), honoured or refused by name.

A PEFT LoRA folder is read by :func:`lora_config_from_peft` (in :mod:`.peft_lora_format`); before
that, :func:`check_peft_lora_keys` walks the config's keys against three tables:

* :data:`HONOURED` — read, and the studio computes what PEFT computes with them;
* :data:`NO_EFFECT` — metadata, or options that only matter together with another key (which is
  itself honoured or refused), so they change no weight and no output here;
* :data:`REFUSED` — options that change the maths in ways the studio does not implement; a
  folder that sets one to anything but its default is refused with a message naming the key and
  saying what the studio does instead.

A key in none of the tables (a newer PEFT's option) is refused the same way when it is set, so
a new option is never ignored silently; ``tests/core/test_peft_config_keys.py`` walks
``dataclasses.fields(peft.LoraConfig)`` so that the tables follow PEFT.

:func:`plain_lora_tensors` turns the tensors of the two PEFT options that are LoRA in another
storage into PEFT's plain LoRA tensors: VeLoRA (its ``lora_velora_embed`` buffers drive only the
training backward pass) and BD-LoRA (block-diagonal factors, expanded to the dense matrices they
stand for).
"""

from __future__ import annotations

import re

import torch
from torch import nn

HONOURED: dict[str, str] = {
    "peft_type": "LORA is read here; LOHA and LOKR by the LoHa/LoKr format",
    "r": "the common rank; each layer's rank is read from its factors' shapes",
    "lora_alpha": "the common alpha",
    "lora_dropout": "dropout on the adapter's input while training",
    "target_modules": "the adapted layers are exactly the ones whose factors the file holds",
    "exclude_modules": "as target_modules: the file's factors say which layers are adapted",
    "layers_to_transform": "as target_modules: the file's factors say which layers are adapted",
    "layers_pattern": "as target_modules: the file's factors say which layers are adapted",
    "rank_pattern": "each layer's rank is read from its factors, which PEFT sized by this pattern",
    "alpha_pattern": "resolved per layer with PEFT's own pattern rule",
    "use_rslora": "scale alpha/sqrt(r) instead of alpha/r",
    "bias": "none, all or lora_only: the trained biases in the file are loaded",
    "modules_to_save": "fully trained copies, loaded from the file",
    "fan_in_fan_out": "follows the layer type as PEFT does (transformers Conv1D transposed, nn.Linear not)",
    "init_lora_weights": (
        "True/False/gaussian/eva/orthogonal/lora_ga/mica leave PEFT's loaded base as it is, so the file's factors "
        "are plain LoRA; pissa re-runs PiSSA's SVD on the base, as PEFT does; olora is read as the rank-2r plain "
        "LoRA it equals (peft_olora); pissa_niter_*, corda and loftq are refused by value"
    ),
    "use_dora": "the DoRA variant, on the layers PEFT's DoRA covers",
    "velora_config": (
        "VeLoRA changes only training's backward pass (compressed activations); its forward is LoRA's, so it loads "
        "as LoRA (its lora_velora_embed buffers are dropped; further training here uses exact gradients)"
    ),
    "use_bdlora": (
        "BD-LoRA's block-diagonal factors are expanded to the dense factors they stand for: the same outputs "
        "(further training here trains them dense)"
    ),
    "ensure_weight_tying": "no effect on a model without tied weights; refused on one that has them",
}

NO_EFFECT: dict[str, str] = {
    "task_type": "which PEFT model class wraps the base; the heads it implies are in modules_to_save",
    "auto_mapping": "which class PEFT rebuilds; metadata",
    "peft_version": "metadata (used to name PEFT's MultiheadAttention out_proj double count)",
    "base_model_name_or_path": "metadata",
    "revision": "metadata (the base model's revision)",
    "inference_mode": "PEFT's trainable flag; the studio decides that per run",
    "runtime_config": "PEFT runtime settings (GPU offload), never saved by PEFT",
    "megatron_core": "the Megatron module name, read only with megatron_config (refused)",
    "qalora_group_size": "read only with use_qalora (refused)",
    "loftq_config": "read only with init_lora_weights='loftq' (refused)",
    "eva_config": "EVA's data-driven initialisation; the file holds the factors it led to",
    "corda_config": "read only with init_lora_weights='corda' (refused)",
    "lora_ga_config": "LoRA-GA's initialisation from gradients; PEFT's loading does not re-run it",
}

_MERGE_IN_PEFT = "or merge it in PEFT (merge_and_unload) and open the merged model here"
REFUSED: dict[str, str] = {
    "lora_bias": f"a trainable bias on lora_B; LoRA Studio's LoRA has none (it trains base biases with bias='all' "
    f"or 'lora_only' instead): {_MERGE_IN_PEFT}",
    "use_qalora": f"QA-LoRA pools each input group before lora_A; LoRA Studio's QLoRA adapts the full input: "
    f"{_MERGE_IN_PEFT}",
    "layer_replication": "PEFT duplicates base layers before adapting them; LoRA Studio adapts the model as "
    "built: merge it in PEFT and save the whole model",
    "trainable_token_indices": "PEFT trains only these embedding rows; LoRA Studio trains an embedding with LoRA "
    f"or as a whole in modules_to_save: {_MERGE_IN_PEFT}",
    "target_parameters": "LoRA on bare nn.Parameters (e.g. MoE expert weights); LoRA Studio adapts layers: "
    f"{_MERGE_IN_PEFT}",
    "megatron_config": f"Megatron tensor-parallel layers; LoRA Studio runs plain PyTorch layers: {_MERGE_IN_PEFT}",
    "alora_invocation_tokens": "aLoRA switches the adapter on only after these tokens; LoRA Studio applies an "
    "adapter to every token, which would change every output",
    "monteclora_config": "MonteCLoRA samples a mixture of LoRA experts; LoRA Studio adapts with one fixed pair "
    f"of factors: {_MERGE_IN_PEFT}",
    "arrow_config": "Arrow routes each token among several LoRA experts; LoRA Studio applies one adapter "
    "at a time (several may be combined into one with add_weighted_adapter)",
    "kasa_config": "KaSA adds a trained singular-value diagonal and truncates the base's SVD; LoRA Studio's "
    f"LoRA has neither: {_MERGE_IN_PEFT}",
}


def _is_set(value: object) -> bool:
    """True for a value that asks for something (PEFT's defaults for these keys are all None, False or empty)."""
    return value not in (None, False, {}, [], "", 0)


def has_tied_weights(model: nn.Module) -> bool:
    """True when two modules of ``model`` share one weight tensor (e.g. GPT-2's wte and lm_head)."""
    seen: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            return True
        seen.add(id(p))
    return False


def check_peft_lora_keys(peft: dict, model: nn.Module | None = None) -> None:
    """Raise ``ValueError`` naming the first key of a PEFT LoRA config the studio cannot honour.

    ``model`` (when given) decides ``ensure_weight_tying``, which matters only for tied weights.
    """
    for key, value in peft.items():
        if key in HONOURED or key in NO_EFFECT or not _is_set(value):
            continue
        if key in REFUSED:
            raise ValueError(f"this adapter sets PEFT's {key}={value!r}: {REFUSED[key]}; LoRA Studio does not load it")
        raise ValueError(
            f"this adapter sets {key}={value!r} in adapter_config.json, an option LoRA Studio does not know (from a "
            "newer PEFT?); it may change the adapter's maths, so the adapter is not loaded: load it with that PEFT "
            f"version, {_MERGE_IN_PEFT}"
        )
    if peft.get("ensure_weight_tying") and model is not None and has_tied_weights(model):
        raise ValueError(
            "this adapter sets PEFT's ensure_weight_tying=True and this model has tied weights: PEFT ties the "
            "adapters of tied layers, LoRA Studio adapts each layer on its own; " + _MERGE_IN_PEFT
        )
    bdlora = peft.get("use_bdlora")
    if _is_set(bdlora) and not isinstance(bdlora, dict):
        raise ValueError(f"this adapter's use_bdlora={bdlora!r} is not a BD-LoRA table; the adapter_config.json "
                         "is damaged: save the adapter again in PEFT")  # fmt: skip


def _block_diagonal(weight: torch.Tensor, blocks: int) -> torch.Tensor:
    # PEFT's BlockDiagonalLinear.weight_as_blockdiagonal_matrix: the row chunks on the diagonal.
    return torch.block_diag(*torch.chunk(weight, blocks, dim=0))


_PLAIN_FACTOR = re.compile(r"^(?P<path>.+)\.(?P<attr>lora_A|lora_B)\.weight$")


def plain_lora_tensors(peft: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` of a PEFT LoRA folder as plain LoRA tensors (see the module docstring); others unchanged."""
    if _is_set(peft.get("velora_config")):
        tensors = {k: t for k, t in tensors.items() if not k.endswith(".lora_velora_embed")}
    bdlora = peft.get("use_bdlora")
    if isinstance(bdlora, dict) and int(bdlora.get("nblocks") or 1) > 1:
        blocks = int(bdlora["nblocks"])
        patterns = {
            "lora_A": bdlora.get("target_modules_bd_a") or [],
            "lora_B": bdlora.get("target_modules_bd_b") or [],
        }
        expanded = {}
        for key, t in tensors.items():
            m = _PLAIN_FACTOR.match(key)
            # PEFT's rule: a module is block-diagonal in A (or B) when a pattern is a substring of its name.
            if m and any(p in m["path"] for p in patterns[m["attr"]]):
                t = _block_diagonal(t, blocks)
            expanded[key] = t
        tensors = expanded
    return tensors


__all__ = ["HONOURED", "NO_EFFECT", "REFUSED", "check_peft_lora_keys", "has_tied_weights", "plain_lora_tensors"]
