"""Chat templates: the rendered training text and its loss mask, token by token.

Two real tokenizers that work offline: the story demo's byte-level BPE GPT-2 tokenizer (no chat
template of its own; the markers are plain text to it), and a small WordLevel tokenizer built here
with ``<|im_start|>``/``<|im_end|>`` as special tokens (each one id).  Every expectation is written
out by hand from the template's public form and the masking rule (assistant content plus the
end-of-turn markup after it), and its ids come from tokenising those hand-written pieces — never
from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_studio.core.data.chat_dataset import ChatDataset
from lora_studio.core.data.chat_templates import BUILTIN_TEMPLATES, resolve_chat_template
from lora_studio.core.data.collate import IGNORE_INDEX
from lora_studio.core.data.errors import DataError
from lora_studio.core.models.demo_models import story_folder

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye now."},
]


@pytest.fixture(scope="module")
def story_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(story_folder()))


@pytest.fixture(scope="module")
def word_tokenizer():
    """A WordLevel chat tokenizer: whitespace and punctuation split words; the chat markers are special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "Be", "brief", ".", "Hi", "there",
             "Hello", "!", "Bye", "now"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    return tokenizer, {w: i for i, w in enumerate(words)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def expected(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels of hand-written (text, trained) pieces, each tokenised on its own."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


CHATML_PIECES = [  # the chatml text of CONVERSATION, cut where the loss starts and stops
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", False),
    ("Hello!<|im_end|>\n", True),
    ("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", False),
    ("Bye now.<|im_end|>\n", True),
]


def test_chatml_render_and_assistant_mask_token_by_token(tmp_path, story_tokenizer):
    data = ChatDataset(str(write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}])), story_tokenizer,
                       template=BUILTIN_TEMPLATES["chatml"], max_length=512)
    assert data.format == "messages" and data.loss_on == "assistant"
    # The rendered text is transformers' own rendering of the template, and the hand-written text.
    rendered = story_tokenizer.apply_chat_template(CONVERSATION, chat_template=BUILTIN_TEMPLATES["chatml"],
                                                   tokenize=False)
    assert rendered == "".join(t for t, _ in CHATML_PIECES)
    assert data.pieces(0) == CHATML_PIECES
    ids, labels = expected(story_tokenizer, CHATML_PIECES)
    assert data[0] == {"input_ids": ids, "labels": labels}


def test_response_loss_trains_only_the_last_answer_and_all_trains_everything(tmp_path, story_tokenizer):
    path = str(write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}]))
    response = ChatDataset(path, story_tokenizer, template=BUILTIN_TEMPLATES["chatml"], loss_on="response",
                           max_length=512)
    untrained_first = [("".join(t for t, _ in CHATML_PIECES[:3]), False), CHATML_PIECES[3]]
    ids, labels = expected(story_tokenizer, untrained_first)
    assert response[0] == {"input_ids": ids, "labels": labels}
    everything = ChatDataset(path, story_tokenizer, template=BUILTIN_TEMPLATES["chatml"], loss_on="all",
                             max_length=512)
    whole = story_tokenizer("".join(t for t, _ in CHATML_PIECES), add_special_tokens=False)["input_ids"]
    assert everything[0] == {"input_ids": whole, "labels": whole}


def test_special_chat_tokens_are_single_ids_and_the_end_of_turn_token_is_trained(tmp_path, word_tokenizer):
    tokenizer, vocab = word_tokenizer
    data = ChatDataset(str(write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}])), tokenizer,
                       template=BUILTIN_TEMPLATES["chatml"], max_length=512)
    v = vocab
    start, end = v["<|im_start|>"], v["<|im_end|>"]
    prompt1 = [start, v["system"], v["Be"], v["brief"], v["."], end, start, v["user"], v["Hi"], v["there"], end,
               start, v["assistant"]]
    answer1 = [v["Hello"], v["!"], end]
    prompt2 = [start, v["user"], v["Bye"], end, start, v["assistant"]]
    answer2 = [v["Bye"], v["now"], v["."], end]
    assert data[0]["input_ids"] == prompt1 + answer1 + prompt2 + answer2
    ignored = [IGNORE_INDEX]
    assert data[0]["labels"] == ignored * len(prompt1) + answer1 + ignored * len(prompt2) + answer2


def test_llama3_mistral_gemma_render_as_their_public_forms(tmp_path, story_tokenizer):
    path = str(write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION[:3]}]))
    bos, eos = story_tokenizer.bos_token, story_tokenizer.eos_token  # both <|endoftext|> for GPT-2
    forms = {
        "llama-3": [(f"{bos}<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n", False), ("Hello!<|eot_id|>", True)],
        "mistral": [(f"{bos}[INST] Be brief.\n\nHi there [/INST]", False), (f"Hello!{eos}", True)],
        "gemma": [(f"{bos}<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n", False),
                  ("Hello!<end_of_turn>\n", True)],
    }
    for name, pieces in forms.items():
        data = ChatDataset(path, story_tokenizer, template=BUILTIN_TEMPLATES[name], max_length=512)
        assert data.pieces(0) == pieces, name
        assert data[0] == dict(zip(("input_ids", "labels"), expected(story_tokenizer, pieces))), name


def test_auto_uses_the_tokenizers_own_template_else_chatml_with_a_note(story_tokenizer):
    assert story_tokenizer.chat_template is None
    name, text, note = resolve_chat_template("auto", story_tokenizer)
    assert (name, text) == ("chatml", BUILTIN_TEMPLATES["chatml"]) and "chatml" in note
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    class WithTemplate:
        chat_template = own

    assert resolve_chat_template("auto", WithTemplate()) == ("the tokenizer's own", own, None)
    assert resolve_chat_template(own, story_tokenizer) == ("custom", own, None)
    with pytest.raises(DataError, match="chatml, llama-3, mistral, gemma"):
        resolve_chat_template("vicuna", story_tokenizer)


def test_a_custom_template_masks_by_prefix_and_one_that_rewrites_turns_is_refused(tmp_path, story_tokenizer):
    path = str(write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION[1:]}]))
    custom = ("{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}")
    data = ChatDataset(path, story_tokenizer, template=custom, max_length=512)
    pieces = [("USER: Hi there\nASSISTANT: ", False), ("Hello!\n", True), ("USER: Bye\nASSISTANT: ", False),
              ("Bye now.\n", True)]
    assert data[0] == dict(zip(("input_ids", "labels"), expected(story_tokenizer, pieces)))
    # Only the last answer is shown in full: earlier turns are rewritten, so no prefix marks them.
    rewriting = ("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}{{ m['role'] }}{% endif %}"
                 "{% endfor %}")
    with pytest.raises(DataError, match=r"c\.jsonl, row 1: the chat template does not render"):
        ChatDataset(path, story_tokenizer, template=rewriting, max_length=512)
