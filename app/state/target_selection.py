"""Pure helpers that turn what the user ticks in the layer tree into the LoRA config's fields.

No Qt here: the tree panel calls these, tests call them directly.  Names are module paths
as :func:`lora_studio.core.describe` lists them.

Why not always a plain list of names: a list entry matches the exact name *or a dotted
suffix* (PEFT's rule), so ticking ResNet's top-level ``conv1`` as ``["conv1"]`` would also
adapt every ``layerN.M.conv1``.  :func:`targets_for` writes the readable list when it means
exactly the ticked layers, and an anchored regex of the names when it would not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lora_studio.core import LoraConfig, ModuleInfo, name_matches, pattern_matches

ATTENTION_PART = re.compile(
    r".*(attn|attention).*|q_proj|k_proj|v_proj|o_proj|query|key|value|qkv|in_proj|out_proj", re.I
)
MLP_PART = re.compile(
    r"mlp|ffn|feed_?forward|intermediate|fc\d*|c_fc|gate_proj|up_proj|down_proj|w[123]|dense_h_to_4h|dense_4h_to_h",
    re.I,
)
LINEAR_TYPES = ("Linear", "NonDynamicallyQuantizableLinear", "Conv1D")


def targets_for(ticked: Iterable[str], all_names: Iterable[str]) -> list[str] | str:
    """The ``targets`` value that adapts exactly ``ticked`` (model order kept by the caller)."""
    ticked = list(dict.fromkeys(ticked))
    names = list(all_names)
    wanted = set(ticked)
    if {n for n in names if name_matches(ticked, n)} <= wanted:  # core's rule for a list of targets
        return ticked
    return "|".join(re.escape(n) for n in ticked)


def pattern_key(name: str, all_names: Iterable[str]) -> str:
    """A ``rank_pattern``/``alpha_pattern`` key matching layer ``name`` only.

    Pattern keys match a whole name or a dotted suffix; a leading ``^`` can only match at the
    start of the full path, which pins a short name that is also a suffix of others."""
    key = re.escape(name)
    return key if {n for n in all_names if pattern_matches(key, n)} == {name} else "^" + key


def with_layer_values(
    lora: LoraConfig, names: Iterable[str], all_names: Iterable[str], *, rank: int | None, alpha: float | None
) -> LoraConfig:
    """``lora`` with per-layer rank and alpha for ``names``; None (or the global value) removes the override."""
    all_names = list(all_names)
    ranks, alphas = dict(lora.rank_pattern), dict(lora.alpha_pattern)
    for name in names:
        key = pattern_key(name, all_names)
        ranks.pop(key, None)
        alphas.pop(key, None)
        # The first matching key wins, so an override for one layer goes before broader patterns.
        if rank is not None and rank != lora.r:
            ranks = {key: rank, **ranks}
        if alpha is not None and alpha != lora.alpha:
            alphas = {key: alpha, **alphas}
    return lora.replace(rank_pattern=ranks, alpha_pattern=alphas)


def _parts(name: str) -> list[str]:
    return name.split(".")


def is_attention(name: str) -> bool:
    """A layer inside an attention block (by the names models use for it)."""
    return any(ATTENTION_PART.fullmatch(part) for part in _parts(name))


def is_mlp(node: ModuleInfo) -> bool:
    """A linear layer of a feed-forward block (``mlp``, ``ffn``, ``fc1``..., BERT's ``layer.N.output``)."""
    if node.type_name not in LINEAR_TYPES or is_attention(node.name):
        return False
    parts = _parts(node.name)
    bert_output = any(p == "output" and i > 0 and parts[i - 1].isdigit() for i, p in enumerate(parts))
    return bert_output or any(MLP_PART.fullmatch(p) for p in parts)


def quick_selection(tree: ModuleInfo, kind: str, all_linear: list[str]) -> list[str]:
    """The layers a quick selection ticks: ``all-linear`` (core's own rule, passed in), ``attention``,
    ``mlp`` or ``none``; only layers LoRA can wrap."""
    if kind == "all-linear":
        return list(all_linear)
    if kind == "none":
        return []
    wrappable = [n for n in tree.walk() if n.can_wrap]
    if kind == "attention":
        return [n.name for n in wrappable if is_attention(n.name)]
    if kind == "mlp":
        return [n.name for n in wrappable if is_mlp(n)]
    raise ValueError(f"unknown quick selection {kind!r}; known: all-linear, attention, mlp, none")
