"""generate_stream: greedy is transformers' greedy token for token, the base side is the model with
adapters disabled, sampling is reproducible by seed, Stop ends within one token, and streamed text
renders multi-byte characters whole."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import perturb_adapters
from torch import nn

from lora_studio.core import LoraConfig, attach, disable_adapters
from lora_studio.core.inference import GenerationSettings, generate_stream, generate_text
from lora_studio.core.inference.generation import prompt_token_ids
from lora_studio.core.models import LoadedModel, load_demo_model

CORPUS = ["the cat sat on the mat.", "a dog ran to the park and back.", "café, naïve, 日本語 and ünïcödé too."]
PROMPT = "the cat"


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE (GPT-2's kind) trained here on a few lines: multi-byte characters span tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _gpt2(tokenizer, *, perturb: bool = True, eos: int | None = None) -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=0, eos_token_id=0 if eos is None else eos)
    model = GPT2LMHeadModel(config).eval()
    attach(model, LoraConfig(r=4, alpha=8, targets=["c_attn", "c_fc"]))
    if perturb:
        perturb_adapters(model, std=0.3)
    return LoadedModel(model=model, task="causal-lm", forward_style="transformers", tokenizer=tokenizer)


def _ids(pieces, which: str) -> list[int]:
    return [p.token_id for p in pieces if p.which == which and p.token_id is not None]


def _transformers_greedy(loaded: LoadedModel, prompt: str, n: int) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    generated = out[0, ids.shape[1]:].tolist()
    eos = loaded.tokenizer.eos_token_id
    return generated[:generated.index(eos)] if eos in generated else generated


def test_greedy_is_transformers_greedy_for_both_sides(tokenizer):
    loaded = _gpt2(tokenizer, eos=299)  # an end-of-text this random model never picks: all 20 tokens compared
    settings = GenerationSettings(max_new_tokens=20, temperature=0)
    pieces = list(generate_stream(loaded, PROMPT, settings))
    adapted, base = _ids(pieces, "adapted"), _ids(pieces, "base")
    assert adapted == _transformers_greedy(loaded, PROMPT, 20)
    with disable_adapters(loaded.model):
        assert base == _transformers_greedy(loaded, PROMPT, 20)
    assert len(adapted) == 20 and adapted != base  # the adapter changes what is generated


def test_sides_alternate_one_token_each_and_each_ends_done(tokenizer):
    loaded = _gpt2(tokenizer, eos=299)
    pieces = list(generate_stream(loaded, PROMPT, GenerationSettings(max_new_tokens=5, temperature=0)))
    assert [p.which for p in pieces] == ["adapted", "base"] * 5
    assert [p.index for p in pieces] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [p.done for p in pieces] == [False] * 8 + [True, True]
    only = list(generate_stream(loaded, PROMPT, GenerationSettings(max_new_tokens=5, temperature=0),
                                sides=("base",)))
    assert {p.which for p in only} == {"base"} and _ids(only, "base") == _ids(pieces, "base")


def test_same_seed_same_text_other_seeds_differ(tokenizer):
    loaded = _gpt2(tokenizer)
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=5)
    first = generate_text(loaded, PROMPT, settings)
    assert generate_text(loaded, PROMPT, settings) == first
    others = [generate_text(loaded, PROMPT, GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.9,
                                                               seed=seed))["adapted"] for seed in (6, 7, 8)]
    assert any(text != first["adapted"] for text in others)


def test_zero_initialised_adapter_samples_the_same_on_both_sides(tokenizer):
    loaded = _gpt2(tokenizer, perturb=False)  # B = 0: the adapted model is the base
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=11)
    pieces = list(generate_stream(loaded, PROMPT, settings))
    assert _ids(pieces, "adapted") == _ids(pieces, "base")  # generators seeded alike: the same draws


def test_top_p_small_is_greedy(tokenizer):
    loaded = _gpt2(tokenizer, eos=299)
    greedy = generate_text(loaded, PROMPT, GenerationSettings(max_new_tokens=12, temperature=0))
    nucleus = generate_text(loaded, PROMPT, GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1e-6,
                                                               seed=3))
    assert nucleus == greedy  # a nucleus of one token: the most likely


def test_cancel_ends_within_one_piece_per_side(tokenizer):
    loaded = _gpt2(tokenizer, eos=299)
    token = SimpleNamespace(cancelled=False)
    seen = []
    stream = generate_stream(loaded, PROMPT, GenerationSettings(max_new_tokens=40, temperature=0), cancel=token)
    for piece in stream:
        seen.append(piece)
        if len(seen) == 4:
            token.cancelled = True
    after = seen[4:]
    assert len(after) <= 2 and {p.which for p in after} <= {"adapted", "base"}
    assert all(p.done and p.token_id is None for p in after)  # the Stop pieces: no new token
    assert sum(p.done for p in seen if p.which == "adapted") == 1


class _Scripted(nn.Module):
    """A 'language model' that emits a fixed token sequence, whatever the input (with a KV 'cache')."""

    def __init__(self, script: list[int], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab = script, vocab
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        step = 0 if past_key_values is None else past_key_values
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, -1, self.script[min(step, len(self.script) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=step + 1)


def test_streamed_text_renders_multibyte_characters_whole(tokenizer):
    text = "café 日本語 ünïcödé"
    script = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert len(script) > len(text.split())  # characters really span tokens
    loaded = LoadedModel(model=_Scripted(script, len(tokenizer)), task="causal-lm", forward_style="transformers",
                         tokenizer=tokenizer)
    pieces = list(generate_stream(loaded, "x", GenerationSettings(max_new_tokens=50, temperature=0),
                                  sides=("adapted",)))
    assert "".join(p.text for p in pieces) == text
    assert all("\ufffd" not in p.text for p in pieces)  # never half a character
    assert pieces[-1].done and pieces[-1].token_id is None  # ended at end-of-text


def test_chat_template_wraps_the_prompt(tokenizer):
    loaded = _gpt2(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<|endoftext|>user: {{ m['content'] }}\n{% endfor %}bot:"
    try:
        wrapped = prompt_token_ids(loaded, "hello", GenerationSettings())
        plain = prompt_token_ids(loaded, "hello", GenerationSettings(chat_template=False))
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(wrapped[0]) == "<|endoftext|>user: hello\nbot:"
    assert tokenizer.decode(plain[0]) == "hello"
    assert prompt_token_ids(loaded, "", GenerationSettings())[0].tolist() == [tokenizer.bos_token_id]


def test_mode_restored_between_pieces_and_bad_calls_refused_at_once(tokenizer):
    loaded = _gpt2(tokenizer)
    loaded.model.train()
    for piece in generate_stream(loaded, PROMPT, GenerationSettings(max_new_tokens=3, temperature=0)):
        assert loaded.model.training and torch.is_grad_enabled()  # nothing held across a yield
    with pytest.raises(ValueError, match="temperature"):
        generate_stream(loaded, PROMPT, GenerationSettings(temperature=-1))
    with pytest.raises(ValueError, match="sides"):
        generate_stream(loaded, PROMPT, sides=("teacher",))
    with pytest.raises(ValueError, match="predict"):
        generate_stream(load_demo_model("digits"), PROMPT)


def test_long_prompt_keeps_its_end_and_stops_at_the_position_limit(tokenizer):
    loaded = _gpt2(tokenizer, eos=299)  # 64 positions
    prompt = " ".join(CORPUS * 6)
    assert len(tokenizer(prompt)["input_ids"]) > 64
    pieces = list(generate_stream(loaded, prompt, GenerationSettings(max_new_tokens=30, temperature=0)))
    assert len(_ids(pieces, "adapted")) == 1 and pieces[-1].done


def test_a_merged_adapter_generates_the_adapted_side_only(tokenizer):
    from lora_studio.core import merge

    loaded = _gpt2(tokenizer, eos=299)
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    before = _ids(list(generate_stream(loaded, PROMPT, settings, sides=("adapted",))), "adapted")
    merge(loaded.model)
    with pytest.raises(ValueError, match="merged"):
        generate_stream(loaded, PROMPT, settings)
    assert _ids(list(generate_stream(loaded, PROMPT, settings, sides=("adapted",))), "adapted") == before


def test_a_chat_answer_stops_at_its_end_of_turn_text_and_never_shows_it(tokenizer):
    from lora_studio.core.data.chat_templates import BUILTIN_TEMPLATES

    # This tokenizer has no chat tokens: "<|im_end|>" is several ordinary pieces, as in the chat demo.
    answer = "the cat sat."
    script = tokenizer(answer + "<|im_end|>\nthe dog ran")["input_ids"] + [tokenizer.eos_token_id]
    assert len(tokenizer("<|im_end|>")["input_ids"]) > 1
    loaded = LoadedModel(model=_Scripted(script, len(tokenizer)), task="causal-lm", forward_style="transformers",
                         tokenizer=tokenizer)
    tokenizer.chat_template = BUILTIN_TEMPLATES["chatml"]
    try:
        pieces = list(generate_stream(loaded, "x", GenerationSettings(max_new_tokens=50, temperature=0),
                                      sides=("adapted",)))
        no_template = list(generate_stream(loaded, "x", GenerationSettings(max_new_tokens=50, temperature=0,
                                                                           chat_template=False), sides=("adapted",)))
    finally:
        tokenizer.chat_template = None
    assert "".join(p.text for p in pieces) == answer  # no marker, nothing after it
    assert all("<" not in p.text for p in pieces)  # the marker's start was held back, never shown
    assert pieces[-1].done and sum(p.done for p in pieces) == 1
    assert "".join(p.text for p in no_template).startswith(answer + "<|im_end|>")  # plain text: no turns to end
