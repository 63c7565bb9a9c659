"""The row formats of instruction and chat data, detected from the rows, each turned into one example.

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system`` and ``history``
  (LLaMA-Factory's earlier [instruction, answer] pairs) — one user turn (the instruction, then a blank
  line and the input when there is one) and one assistant turn, after the history's turns;
* ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` (``human``/``user``,
  ``gpt``/``assistant``/``model``, ``system``);
* ``messages``: OpenAI / Hugging Face ``messages``, a list of ``{"role", "content"}``
  (``system``, ``user``, ``assistant``);
* ``prompt-response``: ``data.prompt_column`` and ``data.response_column``;
* ``text``: ``data.text_column``, trained on every token.

A CSV cell of a conversation column holds the list JSON-encoded.  Every row is checked by
:func:`row_example` before training starts; a bad row is refused naming the source, the row
(from 1) and the fix.  Conversations must start (after one optional system turn) with a user turn
and alternate user/assistant, as the common chat templates require.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..run_config import DATA_FORMATS
from .errors import DataError

CHAT_FORMATS = ("alpaca", "sharegpt", "messages")  # rendered through a chat template
FORMATS = DATA_FORMATS  # the choices of data.format (run_config lists them for the window)
CONVERSATION_COLUMNS = {"sharegpt": "conversations", "messages": "messages"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
DEFAULT_LOSS_ON = {"alpaca": "response", "prompt-response": "response", "sharegpt": "assistant",
                   "messages": "assistant", "text": "all"}


@dataclass(frozen=True)
class Example:
    """One row as training sees it: a conversation (chat formats), or a prompt and a response (raw text)."""

    messages: tuple[dict[str, str], ...] = ()  # chat formats: {"role", "content"} turns
    prompt: str = ""  # text / prompt-response: rendered as they are, with no template
    response: str = ""


def detect_format(columns: list[str], first_row: dict[str, Any], *, prompt_column: str | None, text_column: str,
                  source: str) -> str:
    """The format of rows with ``columns`` (``first_row`` tells sharegpt from messages by its turns' keys)."""
    for column in ("conversations", "messages"):
        if column in columns:
            turns = _turn_list(first_row.get(column), source, 1, column)
            first_turn = turns[0] if turns and isinstance(turns[0], dict) else {}
            return "sharegpt" if "from" in first_turn or ("role" not in first_turn and column == "conversations") \
                else "messages"
    if "instruction" in columns and "output" in columns:
        return "alpaca"
    if prompt_column:
        return "prompt-response"
    if text_column in columns:
        return "text"
    raise DataError(f"{source}: cannot tell the data's format from its columns ({', '.join(map(str, columns))}); "
                    "chat data needs a 'messages' or 'conversations' column, alpaca data 'instruction' and 'output', "
                    "plain text data.text_column; or set data.format")


def conversation_column(fmt: str, columns: list[str]) -> str:
    """The column holding the turns of ``fmt`` (sharegpt: ``conversations``, messages: ``messages``; either name)."""
    preferred = CONVERSATION_COLUMNS[fmt]
    if preferred in columns:
        return preferred
    other = next((c for c in CONVERSATION_COLUMNS.values() if c in columns), None)
    return other or preferred


def required_columns(fmt: str, columns: list[str], *, text_column: str, prompt_column: str | None,
                     response_column: str | None) -> list[str]:
    """The columns ``fmt`` reads from every row."""
    if fmt in CONVERSATION_COLUMNS:
        return [conversation_column(fmt, columns)]
    if fmt == "alpaca":
        return ["instruction", "output"]
    if fmt == "prompt-response":
        if not prompt_column or not response_column:
            raise DataError("data.format prompt-response needs data.prompt_column and data.response_column")
        return [prompt_column, response_column]
    return [text_column]


def _turn_list(value: Any, source: str, number: int, column: str) -> list[Any]:
    if isinstance(value, str):  # a CSV cell (or a string column): the list JSON-encoded
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}, row {number}: column {column!r} is not a JSON list of turns ({exc.msg}); "
                            'write it as [{"role": "user", "content": "..."}, ...]') from None
    if hasattr(value, "tolist"):  # a numpy array from Arrow
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{source}, row {number}: column {column!r} must be a non-empty list of turns, got "
                        f"{type(value).__name__ if value is not None else 'nothing'}")
    return list(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def row_example(row: dict[str, Any], fmt: str, number: int, source: str, *, loss_on: str, column: str = "",
                text_column: str = "text", prompt_column: str | None = None,
                response_column: str | None = None) -> Example:
    """Row ``number`` (from 1) of ``source`` in format ``fmt`` as an :class:`Example`; a bad row is refused."""
    where = f"{source}, row {number}"
    if fmt == "alpaca":
        instruction, output = _text(row.get("instruction")), _text(row.get("output"))
        for name, value in (("instruction", instruction), ("output", output)):
            if value is None:
                raise DataError(f"{where}: empty {name!r}; fill it in or delete the row")
        extra = row.get("input")
        user = instruction + (f"\n\n{extra}" if _text(extra) else "")
        system = _text(row.get("system"))
        turns = ([{"role": "system", "content": system}] if system else []) + _alpaca_history(row, where) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return Example(messages=tuple(turns))
    if fmt in CONVERSATION_COLUMNS:
        return Example(messages=tuple(_conversation(row.get(column), fmt, where, source, number, column, loss_on)))
    if fmt == "prompt-response":
        prompt, response = _text(row.get(prompt_column)), _text(row.get(response_column))
        for name, value in ((prompt_column, prompt), (response_column, response)):
            if value is None:
                raise DataError(f"{where}: empty {name!r}; fill it in or delete the row")
        return Example(prompt=prompt, response=response)
    text = _text(row.get(text_column))
    if text is None:
        raise DataError(f"{where}: empty {text_column!r}; fill it in or delete the row")
    return Example(response=text)


def _alpaca_history(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """LLaMA-Factory's optional alpaca ``history``: earlier [instruction, answer] pairs, as turns before the row's."""
    history = row.get("history")
    if history is None or history == [] or history == "":
        return []
    if isinstance(history, str):
        try:
            history = json.loads(history)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'history' is not a JSON list of [instruction, answer] pairs "
                            f"({exc.msg})") from None
    if hasattr(history, "tolist"):
        history = history.tolist()
    turns: list[dict[str, str]] = []
    for index, pair in enumerate(history if isinstance(history, (list, tuple)) else [None], start=1):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_text(p) for p in pair):
            raise DataError(f"{where}: 'history' item {index} must be an [instruction, answer] pair of texts")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _conversation(value: Any, fmt: str, where: str, source: str, number: int, column: str,
                  loss_on: str) -> list[dict[str, str]]:
    role_key, content_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
    turns: list[dict[str, str]] = []
    for index, turn in enumerate(_turn_list(value, source, number, column), start=1):
        at = f"{where}, turn {index}"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: expected an object with {role_key!r} and {content_key!r}, got "
                            f"{type(turn).__name__}")
        raw_role = turn.get(role_key)
        if fmt == "sharegpt":
            role = SHAREGPT_ROLES.get(str(raw_role).strip().lower()) if raw_role is not None else None
            known = ", ".join(SHAREGPT_ROLES)
        else:
            role = raw_role if raw_role in MESSAGE_ROLES else None
            known = ", ".join(MESSAGE_ROLES)
        if role is None:
            found = "no" if raw_role is None else "unknown"
            raise DataError(f"{at}: {found} {role_key!r} {'' if raw_role is None else repr(raw_role) + ' '}"
                            f"(the roles are: {known}); fix the turn or delete the row")
        content = _text(turn.get(content_key))
        if content is None:
            raise DataError(f"{at}: the {role} turn has no {content_key!r} text; fill it in or delete the turn")
        turns.append({"role": role, "content": content})
    _check_order(turns, where, loss_on)
    return turns


def _check_order(turns: list[dict[str, str]], where: str, loss_on: str) -> None:
    """System first (at most once), then user and assistant alternating from a user turn."""
    body = turns[1:] if turns[0]["role"] == "system" else turns
    if not body:
        raise DataError(f"{where}: only a system turn; add the user and assistant turns or delete the row")
    for index, turn in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn["role"] != expected:
            position = index + 1 + (len(turns) - len(body))
            raise DataError(f"{where}, turn {position}: a {turn['role']} turn where a {expected} turn belongs "
                            "(one optional system turn first, then user and assistant alternating); fix the order")
    if not any(turn["role"] == "assistant" for turn in body):
        raise DataError(f"{where}: no assistant turn, so nothing to learn; add the assistant's answer or delete "
                        "the row")
    if loss_on != "all" and body[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation ends on a user turn, which data.loss_on = {loss_on!r} cannot "
                        "train; end it on the assistant's answer, delete the last turn, or set data.loss_on = 'all'")
