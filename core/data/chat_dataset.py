"""Instruction and chat data for causal language models: rows rendered and masked when asked for.

Built with one streaming pass that checks every row (:func:`.chat_formats.row_example`: a bad
row is refused naming the source and row, before any step); nothing per row is kept but the
source's own index (:class:`.table_files.RowTable` offsets, or Arrow's memory map), and each
example is rendered through the chat template, masked and tokenised in ``__getitem__``.  Items are
``{"input_ids": list[int], "labels": list[int]}`` (labels -100 where no loss is taken), what
:mod:`.collate` and packing take.

Chat formats (alpaca, sharegpt, messages) go through the chat template
(:mod:`.chat_templates`); ``text`` and ``prompt-response`` rows are tokenised as they are (prompt,
response, end-of-text), exactly as :class:`.causal_lm.CausalLMDataset` does for its files.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .causal_lm import encode_pair, has_target
from .chat_formats import (
    CHAT_FORMATS,
    DEFAULT_LOSS_ON,
    Example,
    conversation_column,
    detect_format,
    required_columns,
    row_example,
)
from .chat_sources import open_rows
from .chat_templates import rendered_pieces, tokenize_pieces
from .collate import IGNORE_INDEX
from .errors import DataError

COUNTED_EXAMPLES = 2_000  # examples whose length the truncation count looks at (each is rendered and tokenised)


def first_row_of(rows: Any) -> dict[str, Any]:
    """The first row of a source, read without indexing the whole file (the stream is closed after it)."""
    stream = iter(rows.iter_rows())
    try:
        return next(stream)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def detected_format(config: Any) -> str:
    """The format of ``config.train``'s rows (a :class:`..run_config.DataConfig`): data.format unless auto,
    else found from its columns and first row."""
    if config.format != "auto":
        return config.format
    rows = open_rows(str(config.train), split=config.dataset_split, subset=config.dataset_subset)
    return detect_format(rows.columns, first_row_of(rows), prompt_column=config.prompt_column,
                         text_column=config.text_column, source=str(getattr(rows, "path", config.train)))


def resolve_loss_on(loss_on: str, fmt: str) -> str:
    """``data.loss_on`` for format ``fmt`` (``auto``: assistant for chats, response for instructions, all for text)."""
    resolved = DEFAULT_LOSS_ON[fmt] if loss_on == "auto" else loss_on
    if fmt == "text" and resolved != "all":
        raise DataError(f"data.loss_on {loss_on!r} needs prompts or assistant turns; plain text trains on every "
                        "token (set data.loss_on = 'all' or 'auto')")
    return resolved


class ChatDataset(Dataset):
    """The examples of one source (file, ``datasets`` folder or hub id) in one format.

    ``fmt`` ``auto`` detects the format from the first row; ``template`` is the resolved Jinja text
    (:func:`.chat_templates.resolve_chat_template`), needed for the chat formats.
    """

    def __init__(self, source: str, tokenizer: Any, *, fmt: str = "auto", template: str | None = None,
                 loss_on: str = "auto", max_length: int = 128, text_column: str = "text",
                 prompt_column: str | None = None, response_column: str | None = None, split: str = "train",
                 subset: str | None = None) -> None:
        self.source, self.tokenizer, self.template, self.max_length = str(source), tokenizer, template, max_length
        self.rows = open_rows(self.source, split=split, subset=subset)
        self.name = str(getattr(self.rows, "path", source))
        if self.name.lower().endswith(".txt"):
            text_column = "text"  # a text file's paragraphs (chat_sources.ParagraphRows)
        columns = self.rows.columns
        first_row = first_row_of(self.rows)
        self.format = fmt if fmt != "auto" else detect_format(columns, first_row, prompt_column=prompt_column,
                                                               text_column=text_column, source=self.name)
        self.loss_on = resolve_loss_on(loss_on, self.format)
        if self.format in CHAT_FORMATS and template is None:
            raise DataError(f"data.format {self.format} needs a chat template (data.chat_template)")
        self.options = {"text_column": text_column, "prompt_column": prompt_column, "response_column": response_column,
                        "column": conversation_column(self.format, columns) if self.format in ("sharegpt", "messages")
                        else ""}
        needed = required_columns(self.format, columns, text_column=text_column, prompt_column=prompt_column,
                                  response_column=response_column)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(f"{self.name}: data.format {self.format} needs column {missing[0]!r}; the columns are: "
                            f"{', '.join(map(str, columns))} (set data.format to the data's format)")
        for number, row in enumerate(self.rows.iter_rows(), start=1):  # every row checked, none kept
            self._example(row, number)
        # The truncation count (packing.truncation_note reads truncated/counted) of the first examples only,
        # so a huge set still starts quickly; then, if none of those learns, on to the first that does.
        self.truncated, self.counted, learns = 0, 0, False
        for index in range(min(len(self), COUNTED_EXAMPLES)):
            example = self.full_example(index)
            self.counted += 1
            self.truncated += len(example["input_ids"]) > max_length
            learns = learns or has_target(example["labels"][:max_length])
        index = self.counted
        while not learns and index < len(self):
            learns, index = has_target(self[index]["labels"]), index + 1
        if not learns:
            raise DataError(f"{self.name}: no example has a token to learn within data.max_length = {max_length} "
                            "(prompts longer than max_length?)")

    def _example(self, row: dict[str, Any], number: int) -> Example:
        return row_example(row, self.format, number, self.name, loss_on=self.loss_on, **self.options)

    def __len__(self) -> int:
        return len(self.rows)

    def pieces(self, index: int) -> list[tuple[str, bool]]:
        """Example ``index`` as rendered (text, trained) pieces, the text before tokenising (the preview's)."""
        return self._pieces(self._example(self.rows.row(index), index + 1), index)

    def _pieces(self, example: Example, index: int) -> list[tuple[str, bool]]:
        where = f"{self.name}, row {index + 1}"
        if example.messages:
            return rendered_pieces(self.tokenizer, self.template, list(example.messages), self.loss_on, where=where)
        pieces = [(example.prompt, self.loss_on == "all"), (example.response, True)]
        eos = self.tokenizer.eos_token
        return [p for p in pieces if p[0]] + ([(eos, True)] if eos else [])

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.full_example(index)
        return {"input_ids": example["input_ids"][:self.max_length], "labels": example["labels"][:self.max_length]}

    def full_example(self, index: int) -> dict[str, list[int]]:
        """Example ``index`` before it is cut to ``max_length`` (what packing takes)."""
        example = self._example(self.rows.row(index), index + 1)
        if example.messages:
            ids, labels = tokenize_pieces(self.tokenizer, self._pieces(example, index), IGNORE_INDEX)
        else:  # raw text: the same ids as CausalLMDataset's (the end-of-text token by id, not by text)
            ids, prompt_len = encode_pair(self.tokenizer, example.prompt, example.response)
            labels = list(ids) if self.loss_on == "all" else [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        return {"input_ids": ids, "labels": labels}
