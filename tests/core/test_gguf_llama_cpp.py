"""The studio's GGUF files loaded by llama.cpp itself (through llama-cpp-python), where it is installed: the
merged model and the base with the adapter file (``--lora``) give transformers' logits.  Skipped without it
(CI does not build llama.cpp); ``pip install llama-cpp-python`` compiles it (about half an hour on 2 busy cores).

Tolerances, relative to the largest logit: llama.cpp keeps its attention cache in float16 and sums in its
own order, so even an f32 file differs by a few 1e-4 (seen: 2e-4); 2e-3 allowed for f32, f16 and an f32
adapter; q8_0 rounds every weight to 1/127 of its block's largest (seen: 1e-2), 3e-2 allowed.  The next
token llama.cpp would pick is transformers' at every position, except q8_0 may differ at one position.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (llama.cpp itself)")

from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from lora_studio.core import LoraConfig, attach  # noqa: E402
from lora_studio.core.disk.gguf_export import export_gguf, export_gguf_adapter  # noqa: E402
from lora_studio.core.models.demo_models import story_folder  # noqa: E402

PROMPT = "Once upon a time, a little dog named Max"
BOUNDS = {"f32": 2e-3, "f16": 2e-3, "q8_0": 3e-2}


def _adapted(model, targets):
    attach(model, LoraConfig(r=4, alpha=8, targets=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model.eval()


def _logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _llama_cpp(path, ids, lora=None) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), lora_path=None if lora is None else str(lora), logits_all=True,
                          n_ctx=64, n_threads=2, verbose=False)
    assert list(llm.tokenize(PROMPT.encode(), add_bos=False)) == list(ids), "llama.cpp tokenizes as transformers"
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _close(got: np.ndarray, want: np.ndarray, bound: float, misses: int = 0) -> None:
    relative = np.abs(got - want).max() / np.abs(want).max()
    assert relative <= bound, f"llama.cpp's logits differ by {relative:.3g} of the largest (bound {bound})"
    assert (got.argmax(-1) != want.argmax(-1)).sum() <= misses


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(story_folder()))


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel.from_pretrained(str(story_folder())).eval()


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


CASES = {"gpt2": (_gpt2, ["c_attn", "c_proj"]),
         "llama": (_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_llama_cpp_runs_the_merged_model_and_the_adapter_as_transformers_does(tmp_path, tokenizer, arch) -> None:
    build, targets = CASES[arch]
    ids = tokenizer(PROMPT)["input_ids"]
    base = build()
    export_gguf(base, tmp_path / "base.gguf", tokenizer, precision="f32")
    _close(_llama_cpp(tmp_path / "base.gguf", ids), _logits(base, ids), BOUNDS["f32"])
    model = _adapted(base, targets)
    want = _logits(model, ids)
    export_gguf_adapter(model, tmp_path / "lora.gguf")
    _close(_llama_cpp(tmp_path / "base.gguf", ids, lora=tmp_path / "lora.gguf"), want, BOUNDS["f32"])
    for kind, misses in (("f16", 0), ("q8_0", 1)):
        export_gguf(model, tmp_path / f"merged-{kind}.gguf", tokenizer, precision=kind)
        _close(_llama_cpp(tmp_path / f"merged-{kind}.gguf", ids), want, BOUNDS[kind], misses)
