"""transformers models by hub id or local folder, for the three tasks, with tokenizer or image processor."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .bnb_checkpoint import (
    load_bnb_4bit_into,
    parameters_on_meta,
    quantization_kind,
    refuse_unreadable_quantization,
    stored_tensors,
)
from .heads import TRANSFORMERS_HEAD_NAMES
from .loaded_model import LoadedModel

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _auto_class(task: str):
    import transformers

    return {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "image-classification": transformers.AutoModelForImageClassification,
    }[task]


def _offline_message(name: str, what: str, exc: Exception) -> OSError:
    where = "the folder does not hold it" if Path(name).is_dir() else (
        "it is not a local folder, not in the local cache, and the hub could not be reached (offline?)"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(f"could not load the {what} of {name!r}: {where}. Give a local folder instead. ({first})")


def load_config(name: str, *, trust_remote_code: bool = False, num_classes: int | None = None):
    """The model's config (local folder, cache, or hub); a clear ``OSError`` when it cannot be had."""
    from transformers import AutoConfig

    kwargs = {"num_labels": num_classes} if num_classes is not None else {}
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise _offline_message(name, "config", exc) from None
    except ValueError as exc:  # remote code refused, unknown architecture
        raise ValueError(f"could not load the config of {name!r}: {exc}") from None


def load_transformers(
    name: str,
    *,
    task: str,
    num_classes: int | None = None,
    label_names: list[str] | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    meta: bool = False,
) -> LoadedModel:
    """Load ``name`` for ``task`` with its tokenizer (text) or image processor (images).

    A classification head whose width differs from ``num_classes`` is created fresh (and
    trained with the adapter).  ``meta`` builds from the config alone, allocating nothing.
    """
    config = load_config(name, trust_remote_code=trust_remote_code, num_classes=num_classes)
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    auto = _auto_class(task)
    quantised = quantization_kind(config)
    if quantised not in (None, "bnb-4bit"):
        refuse_unreadable_quantization(name, quantised)
    info: dict | None = None  # from_pretrained's loading report
    note = None
    if meta:
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
    elif quantised == "bnb-4bit":
        model, note = _load_bnb_4bit(name, auto, config, task, _DTYPES[dtype], trust_remote_code)
    else:
        try:
            with _no_load_report():
                model, info = auto.from_pretrained(
                    name, config=config, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code,
                    ignore_mismatched_sizes=task != "causal-lm", output_loading_info=True,
                )
        except OSError as exc:
            raise _offline_message(name, "weights", exc) from None
    if not meta and gradient_checkpointing:
        # Non-reentrant checkpointing works with a frozen embedding (no input grads needed).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = next((h for h in TRANSFORMERS_HEAD_NAMES if task != "causal-lm" and hasattr(model, h)), None)
    if info is not None:
        note = _fresh_weights_note(name, info, head)
    loaded = LoadedModel(
        model=model, task=task, forward_style="transformers", head=head,
        num_classes=num_classes if task != "causal-lm" else None, name_or_path=name,
        label_names=list(label_names) if label_names and task != "causal-lm" else None,
    )
    if note:
        loaded.notes.append(note)
    if task == "image-classification":
        loaded.image_transform = _image_processor(name, trust_remote_code)
    else:
        loaded.tokenizer = _tokenizer(name, trust_remote_code)
    return loaded


def _load_bnb_4bit(name: str, auto, config, task: str, dtype: torch.dtype, trust_remote_code: bool):
    """A ``*-bnb-4bit`` checkpoint as a model whose 4-bit layers keep their stored bytes; returns (model, note)."""
    tensors = stored_tensors(name)
    with parameters_on_meta():
        model = auto.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    head = next((h for h in TRANSFORMERS_HEAD_NAMES if task != "causal-lm" and hasattr(model, h)), None)
    fresh: tuple[str, ...] = ()
    if head is not None:
        shapes = {f"{head}.{k}": tuple(v.shape) for k, v in model.get_submodule(head).state_dict().items()}
        if any(tuple(tensors[k].shape) != shape for k, shape in shapes.items() if k in tensors) or not any(
                k in tensors for k in shapes):
            tensors = {k: v for k, v in tensors.items() if not k.startswith(f"{head}.")}
            fresh = (head,)
    layers = load_bnb_4bit_into(model, tensors, compute_dtype=dtype, fresh=fresh)
    model.eval()  # as from_pretrained leaves a model
    note = (f"{name} is a bitsandbytes 4-bit checkpoint: its {layers} 4-bit layers were loaded as stored (no "
            "re-quantising) and train with lora.variant = 'qlora'")
    if fresh:
        note += f"; its {head!r} head is new and trains with the adapter"
    return model, note


@contextmanager
def _no_load_report() -> Iterator[None]:
    """Keep transformers' load report (a table of MISSING / UNEXPECTED keys) off the console.

    It reports a new classifier head as MISSING, "newly initialized", although the head is the one
    the run trains (or the trained one, loaded right after: issue 15).  What in it matters, weights
    outside the head that start random, :func:`_fresh_weights_note` says in a note instead.  Only
    that report is held back (by the function that logs it); every other warning still shows.
    """
    logger = logging.getLogger("transformers.modeling_utils")  # the logger from_pretrained reports on

    def keep(record: logging.LogRecord) -> bool:
        return record.funcName != "log_state_dict_report" and "LOAD REPORT" not in str(record.msg)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fresh_weights_note(name: str, info: dict, head: str | None) -> str | None:
    """A note naming the weights outside the classifier head that the checkpoint did not give
    (missing, or of another shape, so they start random); None when only the head is new."""
    fresh = set(info.get("missing_keys") or ()) | {entry[0] for entry in info.get("mismatched_keys") or ()}
    if head:
        fresh = {k for k in fresh if k != head and not k.startswith(f"{head}.")}
    if not fresh:
        return None
    listed = sorted(fresh)
    shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
    return (f"{len(listed)} weight(s) of {name} are not in its checkpoint and start random: {shown}; "
            "is it the model meant for this task?")


def _tokenizer(name: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _offline_message(name, "tokenizer", exc) from None
    if tokenizer.pad_token is None:  # GPT-style tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _image_processor(name: str, trust_remote_code: bool):
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _offline_message(name, "image processor", exc) from None

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return transform
