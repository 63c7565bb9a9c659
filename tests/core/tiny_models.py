"""Tiny models for the engine tests: one per supported layer type, and tiny BERT, GPT-2, ViT, ResNet.

Each case gives a model factory (seeded), an input factory and the LoRA targets that cover it.
Models are built from configs: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], object]  # returns a tensor, a tuple of args, or a dict of kwargs
    targets: list[str] | str
    modules_to_save: list[str] = field(default_factory=list)
    tolerance: float = 1e-5  # float32 merge tolerance; convolutions sum more terms per output


def run(model: nn.Module, inputs: object) -> torch.Tensor:
    """Call ``model`` on a case's inputs and return one tensor to compare."""
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif isinstance(inputs, tuple):
        out = model(*inputs)
    else:
        out = model(inputs)
    if isinstance(out, tuple):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    elif hasattr(out, "logits"):
        out = out.logits
    return out


class _Seq(nn.Module):
    """Wraps one layer with a readout so every case returns a single tensor."""

    def __init__(self, layer: nn.Module, head_in: int) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(head_in, 3)

    def forward(self, *args):
        out = self.layer(*args)
        if isinstance(out, tuple):  # LSTMCell (h, c), MultiheadAttention (out, weights)
            out = out[0]
        return self.head(out.flatten(1) if out.dim() > 2 and not isinstance(self.layer, nn.MultiheadAttention) else out)


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()

    return make


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _conv1d_gpt2(nf: int, nx: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(nf, nx)
    nn.init.normal_(layer.weight, std=0.2)
    return layer


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out)


LAYER_CASES: list[Case] = [
    Case("linear", _seeded(lambda: _Seq(nn.Linear(12, 10), 10)), lambda: torch.randn(4, 12, generator=_gen()), ["layer"]),
    Case("conv1d", _seeded(lambda: _Seq(nn.Conv1d(3, 6, 3, padding=1, dilation=1), 6 * 9)),
         lambda: torch.randn(2, 3, 9, generator=_gen()), ["layer"], tolerance=1e-4),
    Case("conv2d_strided_dilated", _seeded(lambda: _Seq(nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2), 5 * 16)),
         lambda: torch.randn(2, 3, 8, 8, generator=_gen()), ["layer"], tolerance=1e-4),
    Case("conv3d", _seeded(lambda: _Seq(nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1)), 4 * 3 * 4 * 4)),
         lambda: torch.randn(2, 2, 3, 4, 4, generator=_gen()), ["layer"], tolerance=1e-4),
    Case("embedding", _seeded(lambda: _Seq(nn.Embedding(20, 8, padding_idx=0), 8 * 5)),
         lambda: torch.tensor([[0, 3, 5, 19, 0], [1, 2, 0, 7, 8]]), ["layer"]),
    Case("gpt2_conv1d", _seeded(lambda: _Seq(_conv1d_gpt2(10, 12), 10)),
         lambda: torch.randn(4, 12, generator=_gen()), ["layer"]),
    Case("multihead_attention", _seeded(_MHA), lambda: torch.randn(2, 5, 16, generator=_gen()), ["attn"]),
    Case("rnn_cell", _seeded(lambda: _Seq(nn.RNNCell(6, 8), 8)),
         lambda: (torch.randn(3, 6, generator=_gen()), torch.randn(3, 8, generator=_gen(2))), ["layer"]),
    Case("lstm_cell", _seeded(lambda: _Seq(nn.LSTMCell(6, 8), 8)),
         lambda: (torch.randn(3, 6, generator=_gen()), (torch.randn(3, 8, generator=_gen(2)),
                                                        torch.randn(3, 8, generator=_gen(3)))), ["layer"]),
    Case("gru_cell", _seeded(lambda: _Seq(nn.GRUCell(6, 8), 8)),
         lambda: (torch.randn(3, 6, generator=_gen()), torch.randn(3, 8, generator=_gen(2))), ["layer"]),
]


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=64))


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def _tiny_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero: outputs would be 0
    return model


def _tiny_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)


def _ids() -> torch.Tensor:
    return torch.randint(1, 99, (2, 7), generator=_gen())


MODEL_CASES: list[Case] = [
    Case("bert", _seeded(_tiny_bert), lambda: {"input_ids": _ids()},
         r".*(query|key|value|output\.dense|intermediate\.dense|word_embeddings)"),  # the pooler is unused
    Case("gpt2", _seeded(_tiny_gpt2), lambda: {"input_ids": _ids()}, ["c_attn", "c_proj", "c_fc", "wte"]),
    Case("vit", _seeded(_tiny_vit), lambda: torch.randn(2, 3, 32, 32, generator=_gen()),
         ["self_attention", "conv_proj", "mlp.0", "mlp.3"], modules_to_save=["heads"], tolerance=1e-4),
    Case("resnet", _seeded(_tiny_resnet), lambda: torch.randn(2, 3, 32, 32, generator=_gen()),
         r".*(conv\d|downsample\.0)", modules_to_save=["fc"], tolerance=1e-4),
]

ALL_CASES = LAYER_CASES + MODEL_CASES


def perturb_adapters(model: nn.Module, std: float = 0.1, seed: int = 7) -> None:
    """Give every adapter factor random values, so the adapters really change the output."""
    from lora_studio.core import adapter_layers

    g = _gen(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for attr in layer.factor_attributes:
                for p in getattr(layer, attr).parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * std)
