"""Chat templates: which one a run uses, and a conversation rendered into trained and untrained pieces.

``data.chat_template``:

* ``auto`` — the tokenizer's own ``chat_template`` when it has one; otherwise ``chatml`` (the
  documented default: it needs no special tokens of the model's, and the run records the choice
  as a warning and in the run folder);
* ``chatml``, ``llama-3``, ``mistral``, ``gemma`` — the built-ins below (the public templates of
  those families, written with the tokenizer's own ``bos_token``/``eos_token``; mistral and gemma
  put a system turn in front of the first user turn, as their newer releases do);
* any other text containing ``{{`` or ``{%`` — a Jinja template of your own.

Rendering goes through transformers' ``tokenizer.apply_chat_template(..., tokenize=False)``, so the
text equals what transformers renders.  The loss mask is found by rendering prefixes: for assistant
turn *i*, the text up to turn *i* with the generation prompt, and the text through turn *i*; the
characters between the two are the turn's content *and the end-of-turn markup the template writes
after it* (chatml ``<|im_end|>\\n``, llama-3 ``<|eot_id|>``, mistral ``</s>``, gemma ``<end_of_turn>\\n``),
so the model learns to stop, as axolotl and LLaMA-Factory train.  A template whose renders are not
prefixes of one another (one that rewrites earlier turns) is refused for masked losses.

Each piece is tokenised on its own (``add_special_tokens=False``: the template writes BOS itself), so
a token never straddles a trained and an untrained piece, and the prompt's tokens are exactly those
``apply_chat_template(..., add_generation_prompt=True)`` gives at inference.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA_3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = '' %}{% set loop_messages = messages %}"
    "{% endif %}{{ bos_token }}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{% if loop.first and system_message %}"
    "{{ '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system_message = '' %}{% set loop_messages = messages %}"
    "{% endif %}{{ bos_token }}{% for message in loop_messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (system_message if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML, "llama-3": LLAMA_3, "mistral": MISTRAL, "gemma": GEMMA}
TEMPLATE_CHOICES = ("auto", *BUILTIN_TEMPLATES)  # the window's list; a Jinja text is accepted too
DEFAULT_TEMPLATE = "chatml"
TEMPLATE_FILE = "chat_template.jinja"  # beside a run's files and an adapter (transformers reads this name too)


def is_jinja(setting: str) -> bool:
    """True when ``setting`` is a template text rather than a name."""
    return "{{" in setting or "{%" in setting


def resolve_chat_template(setting: str, tokenizer: Any) -> tuple[str, str, str | None]:
    """(the template's name, its Jinja text, a note for the run's warnings or None) for ``data.chat_template``."""
    if setting == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # a tokenizer with several named templates: the default one
            own = own.get("default")
        if isinstance(own, str) and own.strip():
            return "the tokenizer's own", own, None
        return DEFAULT_TEMPLATE, BUILTIN_TEMPLATES[DEFAULT_TEMPLATE], (
            f"the tokenizer has no chat template, so the run uses {DEFAULT_TEMPLATE}; set data.chat_template to "
            f"one of {', '.join(BUILTIN_TEMPLATES)} or a Jinja template to choose")
    if setting in BUILTIN_TEMPLATES:
        return setting, BUILTIN_TEMPLATES[setting], None
    if is_jinja(setting):
        return "custom", setting, None
    raise DataError(f"data.chat_template {setting!r} is not a template: use auto, {', '.join(BUILTIN_TEMPLATES)}, "
                    "or a Jinja template text")


def render(tokenizer: Any, template: str, messages: list[dict[str, str]], *, generation_prompt: bool = False,
           where: str = "") -> str:
    """``messages`` rendered by ``template`` through ``tokenizer.apply_chat_template`` (text, not ids)."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja2's TemplateError, or raise_exception() inside the template
        raise DataError(f"{where + ': ' if where else ''}the chat template cannot render this conversation ({exc}); "
                        "fix the template (data.chat_template) or the row") from None


def rendered_pieces(tokenizer: Any, template: str, messages: list[dict[str, str]], loss_on: str,
                    *, where: str = "") -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces, in order; their texts join to the full render.

    ``loss_on``: ``assistant`` trains every assistant turn (content and end-of-turn markup), ``response``
    only the last one, ``all`` the whole text.
    """
    full = render(tokenizer, template, messages, where=where)
    if loss_on == "all":
        return [(full, True)]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on == "response":
        turns = turns[-1:]
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of ``full`` placed in pieces so far
    for i in turns:
        before = render(tokenizer, template, messages[:i], generation_prompt=True, where=where) if i else ""
        through = render(tokenizer, template, messages[:i + 1], where=where)
        if not (full.startswith(through) and through.startswith(before) and len(before) >= done):
            raise DataError(f"{where + ': ' if where else ''}the chat template does not render a conversation as "
                            "a prefix of its continuation (it rewrites earlier turns), so the assistant's tokens "
                            "cannot be found; use a built-in template or data.loss_on = 'all'")
        if len(before) > done:
            pieces.append((full[done:len(before)], False))
        pieces.append((full[len(before):len(through)], True))
        done = len(through)
    if done < len(full):
        pieces.append((full[done:], False))
    return [(text, trained) for text, trained in pieces if text]


def tokenize_pieces(tokenizer: Any, pieces: list[tuple[str, bool]], ignore_index: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of ``pieces``: each piece tokenised on its own; untrained tokens get ``ignore_index``."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if trained else [ignore_index] * len(piece)
    return ids, labels
