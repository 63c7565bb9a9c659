"""What a model change keeps and what it re-derives: one rule, in one place, with no Qt.

When the user loads another model, the run config being edited was written for the last one.
:func:`carry_over` decides, field by field, what the new model gets:

* **re-derived for the new model** — ``[model]`` (the picker's new section: head size
  ``num_classes`` and ``head`` follow the new data/model), the targets (the demo's own, else
  attention projections for a transformer, else all linear layers, else the convolutions of
  the last block for a CNN), the data kind (it follows the model's task), the run name;
* **kept when the user set them by hand** — rank, alpha, dropout, variant and its settings (a
  ``*-bnb-4bit`` checkpoint always gets QLoRA: no other variant adapts its 4-bit layers),
  init, rsLoRA, bias, every training setting, the output options, a hand-picked run folder,
  hand-picked targets when every layer they adapted exists in the new model, per-layer ranks
  and alphas whose layers exist in the new model, data that fits the new model's task (a
  demo always brings its own data);
* a field still at the last model's default takes the new model's default (the digits demo's
  lr=1e-2 is the demo's, not the user's: MiniLM gets its own).

"By hand" means "differs from the defaults the last model came with" (:func:`defaults_for`),
so opening a demo in a fresh window takes the demo's whole config, and a project file's
own choices carry over.  What the user set that cannot carry over is named in the notices,
which the window shows in one line with Undo.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lora_studio.core import (
    DEMOS,
    DataConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    data_kind_problem,
    demo_config,
    fitting_data_kinds,
    name_matches,
    pattern_matches,
)

from .project_files import default_run_dir
from .target_selection import is_attention, targets_for

QUANTISED_VARIANT = "qlora"  # the variant that adapts a 4-bit base (core's base_refusal says why no other)
LORA_SCALARS = ("r", "alpha", "dropout", "init", "use_rslora", "bias", "variant", "variant_settings")
"""The LoRA fields that mean the same on any model: kept when the user set them."""
PROJECTION = re.compile(r"query|key|value|q_proj|k_proj|v_proj|qkv|qkv_proj|c_attn|in_proj|Wqkv|q|k|v", re.I)
"""The last name part of an attention block's input projections, by the names models use."""
MAX_LISTED_TARGETS = 8  # a default target list longer than this is written as names' last parts or all-linear
GENERIC_FOLDER_NAMES = {"model", "models", "snapshot", "snapshots", "main", "weights", "checkpoint"}
DATA_FOR_TASK = {  # what to suggest for a task when core names no fitting kind
    "image-classification": ("image-folder", "torchvision", "digits"),
    "sequence-classification": ("text-classification",),
    "causal-lm": ("causal-lm",),
}
DATA_TITLES = {"image-folder": "an image folder", "torchvision": "a torchvision dataset", "digits": "the Digits data",
               "text-classification": "a text-classification file (CSV/JSONL)", "causal-lm": "a text or JSONL file"}


@dataclass(frozen=True)
class ModelFacts:
    """What the rule needs to know of the new model (built on the meta device: names only)."""

    task: str  # image-classification, sequence-classification or causal-lm
    names: list[str]  # every module path, in model order
    wrappable: list[str]  # layers LoRA can wrap (the head excluded), in model order
    all_linear: list[str] = field(default_factory=list)  # core's all-linear rule on this model
    convolutions: list[str] = field(default_factory=list)  # wrappable Conv layers, in model order
    four_bit: bool = False  # a *-bnb-4bit checkpoint: only variant qlora adapts its layers


@dataclass(frozen=True)
class ModelChange:
    """The config for the new model, and what the user had set that did not carry over."""

    config: RunConfig
    notices: list[str]

    def notice(self) -> str:
        """The notices as the one line the window shows ('' when nothing was lost)."""
        return "; ".join(self.notices)


def run_name_for(model: ModelConfig) -> str:
    """The run name for ``model``: the demo's or torchvision model's name, a hub id's or
    folder's last part (its parent when that part is a generic 'model'), a factory's file stem."""
    name = model.name
    if model.source == "python":
        name = Path(name.rpartition(":")[0]).stem or "model"
    elif model.source == "transformers":
        path = Path(name)
        name = path.name
        if name.lower() in GENERIC_FOLDER_NAMES and path.parent.name:
            name = path.parent.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return slug[:60]


def defaults_for(model: ModelConfig, facts: ModelFacts | None = None) -> RunConfig:
    """The config a model comes with: a demo's whole config, else the engine's defaults with the
    targets :func:`default_targets` picks (when ``facts`` are known) and a run folder named after it."""
    output_dir = default_run_dir(run_name_for(model))
    if model.source == "demo" and model.name in DEMOS:
        config = demo_config(model.name, output_dir=output_dir)
        return config.replace(model=model)
    config = RunConfig(model=model)
    config = config.replace(output=dataclasses.replace(config.output, dir=output_dir))
    if facts is not None:
        config = config.replace(lora=config.lora.replace(targets=default_targets(facts)))
    if facts is not None and facts.four_bit:
        config = config.replace(lora=config.lora.replace(variant=QUANTISED_VARIANT, variant_settings={}))
    return config


def default_targets(facts: ModelFacts) -> list[str] | str:
    """Targets for a model with no demo defaults: attention projections for a transformer, else
    every linear layer, else the last block's convolutions (a CNN whose only linear is its head)."""
    attention = [n for n in facts.wrappable if is_attention(n)]
    projections = [n for n in attention if PROJECTION.fullmatch(n.rsplit(".", 1)[-1])]
    for names in (projections, attention):  # the q/k/v projections read best (BERT: query, key, value)
        targets = compact_targets(names, facts.names) if names else []
        if names and (isinstance(targets, str) or len(targets) <= MAX_LISTED_TARGETS):
            return targets
    if attention:
        return compact_targets(attention, facts.names)
    if facts.all_linear:
        return "all-linear"
    if facts.convolutions:
        top = facts.convolutions[-1].split(".")[0]
        return compact_targets([n for n in facts.convolutions if n.split(".")[0] == top], facts.names)
    return compact_targets(facts.wrappable, facts.names) if facts.wrappable else []


def compact_targets(names: list[str], all_names: Iterable[str]) -> list[str] | str:
    """The shortest readable ``targets`` for exactly ``names``: their last name parts (``query``,
    ``value``) when those match nothing else, else the names themselves (:func:`targets_for`)."""
    all_names = list(all_names)
    leaves = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    if {n for n in all_names if name_matches(leaves, n)} == set(names):
        return leaves
    return targets_for(names, all_names)


def data_problem(data: DataConfig, model: ModelConfig, task: str) -> str | None:
    """Why ``data`` cannot train ``model`` (a ``task`` model), naming the fix; None when it fits.
    Which kinds fit is core's rule (``data_kind_problem``: the task, and the digits demo's 8×8
    grey images only for the digits model or a user's own factory); this adds what to do."""
    if data_kind_problem(data.kind, model, task) is None:
        return None
    wanted = [k for k in fitting_data_kinds(model, task) if k != "digits"] or DATA_FOR_TASK.get(task, ())
    choices = " or ".join(DATA_TITLES.get(k, k) for k in wanted) or "training data"
    have = DATA_TITLES.get(data.kind, data.kind)
    return (f"No training data for {run_name_for(model)} yet: {have} does not fit a {task} model. "
            f"Choose {choices} in the Data tab")


def carry_over(
    old: RunConfig, old_defaults: RunConfig, old_targeted: list[str], new_defaults: RunConfig, facts: ModelFacts
) -> ModelChange:
    """The config for the new model (``new_defaults`` is what it comes with, ``facts`` what it has)
    made from ``old`` (``old_defaults``: what the last model came with; ``old_targeted``: the layers
    ``old`` adapted on it), and the notices naming what the user set that could not carry over."""
    notices: list[str] = []
    title = run_name_for(new_defaults.model)
    names = set(facts.names)

    def hand(section: str, name: str) -> bool:
        return getattr(getattr(old, section), name) != getattr(getattr(old_defaults, section), name)

    # [lora]: scalars by the hand-set rule; targets only when every adapted layer exists here.
    lora = new_defaults.lora
    scalars = {n: getattr(old.lora, n) for n in LORA_SCALARS if hand("lora", n)}
    lora = lora.replace(**scalars) if scalars else lora
    if facts.four_bit and lora.variant != QUANTISED_VARIANT:
        notices.append(f"variant {lora.variant} cannot adapt {title}'s 4-bit layers (a bitsandbytes checkpoint): "
                       "set to QLoRA")
        lora = lora.replace(variant=QUANTISED_VARIANT, variant_settings={})
    targets_hand = any(hand("lora", n) for n in ("targets", "exclude", "layers"))
    if targets_hand and old_targeted:
        missing = [n for n in old_targeted if n not in names]
        if not missing:
            lora = lora.replace(targets=targets_for(old_targeted, facts.names), exclude=None, layers=None)
        else:
            notices.append(f"targets {_few(missing)} are not in {title} (now: {_describe_targets(lora)})")
    lora, lost = _patterns(lora, old.lora, old_defaults.lora, facts)
    if lost:
        notices.append(f"per-layer rank/alpha for {_few(lost)} dropped (no such layer in {title})")
    saved_hand = [m for m in old.lora.modules_to_save if m not in old_defaults.lora.modules_to_save]
    kept_saved = [m for m in saved_hand if any(name_matches([m], n) for n in names)]
    if kept_saved:
        lora = lora.replace(modules_to_save=list(dict.fromkeys(lora.modules_to_save + kept_saved)))
    if len(kept_saved) < len(saved_hand):
        notices.append(f"modules_to_save {_few([m for m in saved_hand if m not in kept_saved])} are not in {title}")

    # [training] and [output]: the hand-set rule, field by field; the run folder follows the model.
    training = _hand_set(old.training, old_defaults.training, new_defaults.training)
    output = _hand_set(old.output, old_defaults.output, new_defaults.output)

    # [data]: it must fit the new model's task; the user's data is kept when it does.
    model = new_defaults.model
    data = new_defaults.data
    old_fits = data_problem(old.data, model, facts.task) is None
    demo = model.source == "demo"  # a demo is its data: it always comes with its own
    if old.data != old_defaults.data and old_fits and not demo:
        data = old.data
    elif data_problem(data, model, facts.task) is not None:
        data = old.data  # nothing fits yet: the Data tab asks for a file (the session says so)
        problem = data_problem(data, model, facts.task) or ""
        notices.append(problem[:1].lower() + problem[1:])
    elif old.data != old_defaults.data and old.data.train:
        notices.append(f"data {Path(old.data.train).name} ({old.data.kind}) does not fit {title}")
    # [samples]: the hand-set rule too; prompts are for language models only.
    samples = _hand_set(old.samples, old_defaults.samples, new_defaults.samples)
    if samples.prompts and facts.task != "causal-lm":
        if samples.prompts != new_defaults.samples.prompts:
            notices.append(f"samples prompts dropped ({title} is not a language model)")
        samples = dataclasses.replace(samples, prompts=list(new_defaults.samples.prompts))
    config = RunConfig(model=model, data=data, lora=lora, training=training, output=output, samples=samples)
    return ModelChange(config, [n for n in notices if n])


def _hand_set(old, old_defaults, new_defaults):
    """``new_defaults`` with every field the user changed from ``old_defaults`` taken from ``old``."""
    changed = {f.name: getattr(old, f.name) for f in dataclasses.fields(old)
               if getattr(old, f.name) != getattr(old_defaults, f.name)}
    return dataclasses.replace(new_defaults, **changed) if changed else new_defaults


def _patterns(lora: LoraConfig, old: LoraConfig, old_defaults: LoraConfig, facts: ModelFacts):
    """``lora`` with the old hand-set per-layer ranks/alphas whose keys match a layer of the new model."""
    lost: list[str] = []
    merged = {}
    for attr in ("rank_pattern", "alpha_pattern"):
        values = dict(getattr(lora, attr))
        defaults = getattr(old_defaults, attr)
        for key, value in getattr(old, attr).items():
            if defaults.get(key) == value:
                continue
            if any(pattern_matches(key, n) for n in facts.wrappable):
                values.setdefault(key, value)
            elif key not in lost:
                lost.append(key.lstrip("^").replace("\\", ""))
        merged[attr] = values
    return lora.replace(**merged), lost


def _describe_targets(lora: LoraConfig) -> str:
    targets = lora.targets
    return (targets if len(targets) <= 60 else targets[:57] + "…") if isinstance(targets, str) else _few(targets)


def _few(names: list[str], shown: int = 3) -> str:
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")
