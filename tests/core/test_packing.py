"""Padding-free packing: whole examples per row, positions restarting, attention never crossing
examples, and a packed batch scoring the same summed loss as its examples unpacked."""

from __future__ import annotations

import pytest
import torch

from lora_studio.core.data.collate import IGNORE_INDEX, block_causal_mask, batch_tokens, make_collate
from lora_studio.core.data.packing import PackedDataset, truncation_note
from lora_studio.core.models.demo_models import load_demo_model
from lora_studio.core.training.task_loss import score_batch

TEXTS = ["Once upon a time there was a little dog.", "Tom had a red ball.",
         "One day, a little girl named Lily went to the park and saw a big tree.", "The sun was warm.",
         "There was once a cat who liked milk very much.", "Sam ran.", "The bird sang a happy song in the morning."]


@pytest.fixture(scope="module")
def story():
    loaded = load_demo_model("story")
    loaded.model.eval()  # no dropout: the same examples must score the same
    return loaded


def examples_of(tokenizer, texts, prompt_words: int = 0):
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = [IGNORE_INDEX] * prompt_words + ids[prompt_words:]  # a masked "prompt" at the start
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_rows_hold_whole_examples_in_order_with_positions_restarting() -> None:
    examples = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (3, 4, 2, 6, 9)]
    packed = PackedDataset(examples, 8)
    rows = [packed[i] for i in range(len(packed))]
    # next-fit in order: [3+4], [2+6], [9 cut to 8]
    assert [r["position_ids"] for r in rows] == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4, 5], list(range(8))]
    assert rows[0]["input_ids"] == [1, 2, 3, 1, 2, 3, 4]
    # each example's first label is masked: the token before it belongs to another example
    assert rows[0]["labels"] == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 2, 3, 4]
    assert packed.truncated == 1 and packed.counted == 5
    note = truncation_note(packed, torch.utils.data.Subset(packed, [0]))  # shared by both splits: counted once
    assert note is not None and note.startswith("1 of 5 examples are longer than data.max_length (8 tokens)")
    assert truncation_note(PackedDataset(examples[:2], 8)) is None
    packed.total = 50  # a dataset that counted only its first examples says so
    assert truncation_note(packed).startswith("1 of the first 5 (of 50) examples are longer")


def test_block_mask_is_causal_within_examples_only() -> None:
    batch = make_collate(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
                             {"input_ids": [5], "labels": [5], "position_ids": [0]}])
    allowed = batch["attention_mask"][:, 0] == 0
    assert batch["attention_mask"].shape == (2, 1, 3, 3)
    assert allowed[0].tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    # the padding after the short row is an example of its own: every row of the mask sees something
    assert allowed[1].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert batch["labels"][1].tolist() == [5, IGNORE_INDEX, IGNORE_INDEX]
    assert batch_tokens(batch) == 4
    assert block_causal_mask(torch.tensor([[0, 1, 2]]))[0, 0].eq(0).tolist() == torch.ones(3, 3).tril().bool().tolist()


@pytest.mark.parametrize("prompt_words", [0, 3])
def test_packed_batch_scores_the_unpacked_loss(story, prompt_words: int) -> None:
    examples = examples_of(story.tokenizer, TEXTS, prompt_words)
    collate = make_collate(story.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        alone = [score_batch(story.model, collate([e]), "causal-lm", story.forward_style) for e in examples]
        unpacked_sum = sum(float(s.loss_sum) for s in alone)
        unpacked_targets = sum(s.targets for s in alone)
        packed = PackedDataset(examples, 40)
        assert 1 < len(packed) < len(examples)  # several examples share rows, and there is more than one row
        score = score_batch(story.model, collate([packed[i] for i in range(len(packed))]), "causal-lm",
                            story.forward_style)
    assert score.targets == unpacked_targets
    assert float(score.loss_sum) == pytest.approx(unpacked_sum, rel=1e-5, abs=1e-5)
    assert float(score.loss_sum) / score.targets == pytest.approx(unpacked_sum / unpacked_targets, abs=1e-5)


def test_a_token_does_not_see_the_other_examples_of_its_row(story) -> None:
    first, second, other = examples_of(story.tokenizer, [TEXTS[0], TEXTS[1], TEXTS[4]])
    collate = make_collate(0)
    rows = [PackedDataset([first, second], 64)[0], PackedDataset([other, second], 64)[0]]
    assert len(rows[0]["input_ids"]) != len(rows[1]["input_ids"])  # the neighbour's length changes too
    batch = collate(rows)
    with torch.no_grad():
        logits = story.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
    n = len(second["input_ids"])
    ends = [len(r["input_ids"]) for r in rows]
    torch.testing.assert_close(logits[0, ends[0] - n:ends[0]], logits[1, ends[1] - n:ends[1]], rtol=0, atol=1e-5)
    alone = story.model(input_ids=torch.tensor([second["input_ids"]])).logits[0]
    torch.testing.assert_close(logits[0, ends[0] - n:ends[0]], alone, rtol=0, atol=1e-5)


def _tiny_llama(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config._attn_implementation = attention
    return LlamaForCausalLM(config).eval()


def _tiny_gpt2(attention: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    config._attn_implementation = attention
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("build", [_tiny_llama, _tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_llama_and_gpt2_take_the_mask_with_eager_and_sdpa_attention(build, attention: str) -> None:
    """The 4D additive mask and restarting positions (rotary for Llama, learned for GPT-2) give each
    attention implementation the unpacked loss."""
    model = build(attention)
    lengths = [5, 9, 3, 12, 7, 4]
    g = torch.Generator().manual_seed(3)
    examples = []
    for n in lengths:
        ids = torch.randint(1, 64, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX, IGNORE_INDEX] + ids[2:]})
    collate = make_collate(0)
    with torch.no_grad():
        alone = [score_batch(model, collate([e]), "causal-lm", "transformers") for e in examples]
        packed = PackedDataset(examples, 16)
        score = score_batch(model, collate([packed[i] for i in range(len(packed))]), "causal-lm", "transformers")
    assert score.targets == sum(s.targets for s in alone)
    assert float(score.loss_sum) == pytest.approx(sum(float(s.loss_sum) for s in alone), rel=1e-5, abs=1e-5)
