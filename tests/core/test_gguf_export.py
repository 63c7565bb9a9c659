"""GGUF export read back with the ``gguf`` package's own reader: every tensor equals the merged
model's (to the chosen precision), in llama.cpp's layout, with the metadata llama.cpp requires;
an adapter file's ``alpha / r · lora_b @ lora_a`` equals what merging adds; what GGUF cannot hold
is refused by name and leaves no file behind.

Architectures: GPT-2 (the story demo's pretrained model and tokenizer) and a tiny Llama built from
a config with the same byte-level BPE tokenizer (no download).
"""

from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from lora_studio.core import LoraConfig, attach  # noqa: E402
from lora_studio.core.disk.gguf_export import export_gguf, export_gguf_adapter  # noqa: E402
from lora_studio.core.disk.merged_export import merged_copy  # noqa: E402
from lora_studio.core.models.demo_models import minilm_folder, story_folder  # noqa: E402

# Relative error bounds of the stored types against float32: half the spacing at the value's
# exponent (f16: 2^-11, bf16: 2^-8); q8_0 rounds to 1/127 of its 32-block's largest magnitude.
F16_REL, BF16_REL = 2.0**-11, 2.0**-8


def _story() -> tuple[GPT2LMHeadModel, object]:
    folder = str(story_folder())
    return GPT2LMHeadModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _perturbed(model, targets, **lora):
    attach(model, LoraConfig(r=4, alpha=8, targets=targets, **lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists dimensions innermost first
        tensors[t.name] = torch.from_numpy(values.astype("float32").reshape(shape))
    fields = {}
    for name, field in reader.fields.items():
        value = field.contents() if hasattr(field, "contents") else None
        fields[name] = value
    return tensors, fields


def _rotary(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out here as the reference."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _expected_gpt2(model) -> dict[str, torch.Tensor]:
    state = merged_copy(model).state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
    out = {}
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.T  # Conv1D stores (in, out)
        out[names.get_name(key, try_suffixes=(".weight", ".bias"))] = value.float()
    out["output.weight"] = out["token_embd.weight"]
    return out


def test_a_gpt2_model_reads_back_equal_with_the_metadata_llama_cpp_needs(tmp_path) -> None:
    model, tokenizer = _story()
    _perturbed(model, ["c_attn", "c_fc"])
    result = export_gguf(model, tmp_path / "story.gguf", tokenizer, precision="f32")
    tensors, fields = _read(result.path)
    expected = _expected_gpt2(model)
    assert tensors.keys() == expected.keys() and result.tensors == len(expected)
    for name, value in expected.items():
        assert torch.equal(tensors[name], value), name
    config = model.config
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.block_count"] == config.n_layer and fields["gpt2.embedding_length"] == config.n_embd
    assert fields["gpt2.context_length"] == config.n_positions and fields["gpt2.attention.head_count"] == config.n_head
    assert fields["tokenizer.ggml.model"] == "gpt2"
    tokens = fields["tokenizer.ggml.tokens"]
    vocab = tokenizer.get_vocab()
    assert len(tokens) == config.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    assert len(fields["tokenizer.ggml.merges"]) > 0 and fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id


@pytest.mark.parametrize("precision,bound", [("f16", F16_REL), ("bf16", BF16_REL), ("q8_0", None)])
def test_smaller_types_stay_within_their_rounding(tmp_path, precision, bound) -> None:
    model, tokenizer = _story()
    _perturbed(model, ["c_attn"])
    tensors, _ = _read(export_gguf(model, tmp_path / "m.gguf", tokenizer, precision=precision).path)
    for name, value in _expected_gpt2(model).items():
        got = tensors[name]
        if value.dim() <= 1:
            assert torch.equal(got, value), name  # norms and biases stay float32
            continue
        if bound is not None:
            assert torch.all((got - value).abs() <= bound * value.abs() + 1e-7), name
        else:  # q8_0: half a step of its block's scale (max |x| / 127), plus that scale's own f16 rounding
            blocks = value.reshape(-1, 32)  # (up to 127 steps times 2^-11 of a step)
            step = blocks.abs().amax(dim=1, keepdim=True) / 127
            assert torch.all((got.reshape(-1, 32) - blocks).abs() <= step * (0.5 + 127 * F16_REL) + 1e-6), name


def test_a_llama_model_has_its_q_and_k_rows_in_rotary_order(tmp_path) -> None:
    model = _llama()
    _perturbed(model, ["q_proj", "k_proj", "v_proj", "down_proj"])
    _, tokenizer = _story()
    tensors, fields = _read(export_gguf(model, tmp_path / "llama.gguf", tokenizer, precision="f32").path)
    merged = merged_copy(model).state_dict()
    assert torch.equal(tensors["blk.0.attn_q.weight"], _rotary(merged["model.layers.0.self_attn.q_proj.weight"], 4))
    assert torch.equal(tensors["blk.1.attn_k.weight"], _rotary(merged["model.layers.1.self_attn.k_proj.weight"], 2))
    assert torch.equal(tensors["blk.0.attn_v.weight"], merged["model.layers.0.self_attn.v_proj.weight"])
    assert torch.equal(tensors["output.weight"], merged["lm_head.weight"])
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 16
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(model.config.rms_norm_eps)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_adapter_file_adds_exactly_what_merging_adds(tmp_path, arch) -> None:
    if arch == "gpt2":
        model, targets = _story()[0], ["c_attn", "c_fc"]
        lora = {"rank_pattern": {"transformer.h.1.attn.c_attn": 2}, "alpha_pattern": {"transformer.h.0.mlp.c_fc": 3.0}}
    else:
        model, targets, lora = _llama(), ["q_proj", "k_proj", "o_proj"], {"use_rslora": True}
    _perturbed(model, targets, **lora)
    tokenizer = _story()[1]
    tensors, fields = _read(export_gguf_adapter(model, tmp_path / "a.gguf").path)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    alpha = fields["adapter.lora.alpha"]
    merged, _ = _read(export_gguf(model, tmp_path / "m.gguf", tokenizer, precision="f32").path)
    adapted = [name.removesuffix(".lora_a") for name in tensors if name.endswith(".lora_a")]
    assert len(adapted) == len(targets) * model.config.num_hidden_layers
    ranks = {tensors[f"{name}.lora_a"].shape[0] for name in adapted}
    assert ranks == ({2, 4} if arch == "gpt2" else {4})  # the rank pattern reached the file
    with torch.no_grad():
        for p_name, p in model.named_parameters():
            if "lora_B" in p_name:
                p.zero_()
    plain, _ = _read(export_gguf(model, tmp_path / "p.gguf", tokenizer, precision="f32").path)  # B = 0: the base
    for name in adapted:
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        delta = alpha / a.shape[0] * b @ a  # what llama.cpp adds: scale alpha / r, r from lora_a
        torch.testing.assert_close(delta, merged[name] - plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_what_gguf_cannot_hold_is_refused_by_name_and_writes_nothing(tmp_path) -> None:
    from transformers import AutoModel

    target = tmp_path / "x.gguf"
    target.write_bytes(b"previous")
    bert = AutoModel.from_pretrained(str(minilm_folder()))
    with pytest.raises(ValueError, match="'bert'.*safetensors"):
        export_gguf(bert, target, None)
    wordpiece = AutoTokenizer.from_pretrained(str(minilm_folder()))
    with pytest.raises(ValueError, match="byte-level BPE.*'WordPiece'"):
        export_gguf(_llama(), target, wordpiece)
    dora = _perturbed(_llama(), ["q_proj"], variant="dora")
    with pytest.raises(ValueError, match="plain LoRA.*'dora'"):
        export_gguf_adapter(dora, target)
    with pytest.raises(ValueError, match="f32, f16, bf16, q8_0"):
        export_gguf(_llama(), target, _story()[1], precision="q4_k")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]  # no staging left


def test_the_cli_exports_a_run_as_gguf(tmp_path, capsys) -> None:
    from lora_studio.core.cli import main
    from lora_studio.core.demo import demo_config

    config = demo_config("story", output_dir=tmp_path / "run", steps=2)
    (tmp_path / "RUN.toml").write_text(config.to_toml())
    assert main(["train", str(tmp_path / "RUN.toml"), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "story.gguf"), "--gguf-type", "q8_0"]) == 0
    assert main(["export", str(tmp_path / "run"), "--gguf-adapter", str(tmp_path / "story-lora.gguf")]) == 0
    out = capsys.readouterr().out
    assert "GGUF model (gpt2, q8_0" in out and "GGUF adapter (gpt2, f32" in out
    assert out.count("read back with gguf's reader: largest difference") == 2
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "story.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err


def test_the_cli_removes_a_gguf_file_that_does_not_read_back_as_the_model(tmp_path, capsys, monkeypatch) -> None:
    from lora_studio.core.cli import main
    from lora_studio.core.demo import demo_config
    from lora_studio.core.disk import gguf_export

    config = demo_config("story", output_dir=tmp_path / "run", steps=1)
    (tmp_path / "RUN.toml").write_text(config.to_toml())
    assert main(["train", str(tmp_path / "RUN.toml"), "--quiet"]) == 0
    monkeypatch.setattr(gguf_export, "verify_gguf", lambda result, model, adapter_name=None: 0.5)  # a bad file
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "story.gguf")]) == 1
    assert not (tmp_path / "story.gguf").exists()
    assert "differs from the model by 0.5" in capsys.readouterr().err


@pytest.mark.parametrize("precision,bound", [("f32", 0.0), ("f16", 2 * F16_REL), ("q8_0", 1 / 127)])
def test_verify_reads_the_file_back_and_reports_its_rounding(tmp_path, precision, bound) -> None:
    from lora_studio.core.disk.gguf_export import verify_gguf

    model, tokenizer = _story()
    _perturbed(model, ["c_attn"])
    assert verify_gguf(export_gguf(model, tmp_path / "m.gguf", tokenizer, precision=precision), model) <= bound
    adapter = export_gguf_adapter(model, tmp_path / "a.gguf")
    assert verify_gguf(adapter, model) <= 1e-6  # float32 factors: only the fold's rounding
    with torch.no_grad():  # a file that no longer matches the model is reported, not passed
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(1.0)
    assert verify_gguf(adapter, model) > 0.1
