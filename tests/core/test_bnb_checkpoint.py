"""A ``*-bnb-4bit`` checkpoint (bitsandbytes' 4-bit layout, as transformers saves a model loaded with
``BitsAndBytesConfig(load_in_4bit=True)``) loads as the QLoRA base without bitsandbytes, keeping every stored
byte, and trains.

The checkpoint is made in the test: a tiny Llama whose linear layers are quantised and written in
bitsandbytes' entries (``tests/core/test_bnb_4bit.py`` shows those entries are bitsandbytes' own, byte for
byte), the rest in bfloat16 as such checkpoints ship, with the story demo's tokenizer files.
Tolerance: the loaded model against the float model holding the same dequantised weights, 1e-5 (the
same arithmetic; the float model's layers multiply in another order).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from lora_studio.core import LoraConfig
from lora_studio.core.disk.bnb_4bit import nf4_linear_entries
from lora_studio.core.disk.merged_export import export_merged
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.layers.nf4_linear import NF4Linear
from lora_studio.core.models.demo_models import story_folder
from lora_studio.core.models.transformers_models import load_transformers
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import latest_checkpoint, load_for_inference, resume_run, train
from lora_studio.core.training.events import Failed

QUANTISED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BNB_CONFIG = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
              "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}


def _float_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _write_checkpoint(folder: Path, model: LlamaForCausalLM, quantization: dict | None = None) -> dict:
    """``model`` saved as a bitsandbytes 4-bit checkpoint; returns the 4-bit layers written, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    layers, entries = {}, {}
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in QUANTISED:
            layers[name] = NF4Linear.from_float(module.to(torch.bfloat16))
            entries.update(nf4_linear_entries(f"{name}.weight", layers[name]))
    for key, value in model.state_dict().items():
        if key.removesuffix(".weight") not in layers:
            entries[key] = value.to(torch.bfloat16)
    save_file({k: v.contiguous() for k, v in entries.items()}, str(folder / "model.safetensors"))
    config = model.config.to_dict()
    config.update(architectures=["LlamaForCausalLM"], quantization_config=quantization or BNB_CONFIG)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(story_folder() / name, folder / name)
    return layers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict, LlamaForCausalLM]:
    model = _float_llama()
    folder = tmp_path_factory.mktemp("tiny-llama-bnb-4bit")
    layers = _write_checkpoint(folder, model)
    return folder, layers, _float_llama()


def test_every_4bit_layer_loads_with_its_stored_bytes(checkpoint) -> None:
    folder, written, _ = checkpoint
    loaded = load_transformers(str(folder), task="causal-lm")
    found = {n: m for n, m in loaded.model.named_modules() if isinstance(m, NF4Linear)}
    assert sorted(found) == sorted(written)
    for name, layer in found.items():
        assert layer.layout == written[name].layout and layer.source_dtype == torch.bfloat16
        for key, tensor in written[name].quantised_tensors().items():
            assert torch.equal(layer.quantised_tensors()[key], tensor), (name, key)
    assert any("bitsandbytes 4-bit checkpoint" in note and "14 4-bit layers" in note for note in loaded.notes)


def test_the_loaded_model_computes_with_the_dequantised_weights(checkpoint) -> None:
    folder, written, reference = checkpoint
    loaded = load_transformers(str(folder), task="causal-lm").model.eval()
    state = {k: v.to(torch.bfloat16).float() for k, v in reference.state_dict().items()}  # as stored: bfloat16
    for name, layer in written.items():
        state[f"{name}.weight"] = layer.dequantized_weight(torch.float32)
    reference.load_state_dict(state)
    ids = torch.tensor([[1, 17, 300, 42, 7, 999]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)
    assert torch.equal(loaded.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq), "buffers computed"


def _run(tmp_path: Path, folder: Path, variant: str) -> RunConfig:
    data = tmp_path / "lm.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["Tom had a ball.", "The sun was warm."] * 4),
                    encoding="utf-8")
    return RunConfig(model=ModelConfig(source="transformers", name=str(folder), task="causal-lm"),
                     data=DataConfig(kind="causal-lm", train=str(data), validation_split=0.0),
                     lora=LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"], variant=variant),
                     training=TrainingConfig(max_steps=3, batch_size=2, lr=1e-2, eval_every=0, checkpoint_every=0,
                                             device="cpu"),
                     output=OutputConfig(dir=str(tmp_path / "run"), tensorboard=False))


def test_a_qlora_run_trains_on_the_4bit_checkpoint_and_leaves_its_bytes_alone(tmp_path, checkpoint) -> None:
    folder, _, _ = checkpoint
    before = (folder / "model.safetensors").read_bytes()
    events: list = []
    result = train(_run(tmp_path, folder, "qlora"), events.append)
    assert result.status == "finished", [e for e in events if isinstance(e, Failed)]
    assert result.final_loss is not None and result.final_loss == result.final_loss
    assert result.variant["quantised_layers"] == 14
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "model.safetensors").read_bytes() == before


def test_the_merged_export_is_a_plain_float_model_equal_to_the_adapted_one(tmp_path, checkpoint) -> None:
    """Untargeted 4-bit layers are dequantised and the config forgets the quantisation, so any loader reads it."""
    from transformers import AutoModelForCausalLM

    folder, _, _ = checkpoint
    assert train(_run(tmp_path, folder, "qlora")).status == "finished"
    live = load_for_inference(tmp_path / "run").model.eval()
    export_merged(live, tmp_path / "merged")
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert not any(isinstance(m, NF4Linear) for m in merged.modules())
    ids = torch.tensor([[1, 17, 300, 42, 7, 999]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, live(ids).logits, atol=1e-4, rtol=0)


def test_checkpoints_leave_the_4bit_base_out_and_resume_exactly(tmp_path, checkpoint) -> None:
    """The packed weights never change, so checkpoints hold only the adapter; a resume rebuilds the base
    from the checkpoint folder and continues bit for bit (constant schedule: the extension does not move it)."""
    folder, _, _ = checkpoint

    def run(out: Path, steps: int) -> RunConfig:
        out.mkdir(exist_ok=True)
        config = _run(out, folder, "qlora")
        training = dataclasses.replace(config.training, max_steps=steps, schedule="constant")
        return config.replace(training=training, output=dataclasses.replace(config.output, dir=str(out / "run")))

    assert train(run(tmp_path / "whole", 4)).status == "finished"
    assert train(run(tmp_path / "parts", 2)).status == "finished"
    stored = load_safetensors(latest_checkpoint(tmp_path / "parts" / "run") / "model.safetensors")
    assert stored and all("lora_" in key for key in stored), sorted(stored)[:3]
    assert resume_run(tmp_path / "parts" / "run", extra_steps=2).status == "finished"
    whole = load_safetensors(tmp_path / "whole" / "run" / "adapter" / "adapter_model.safetensors")
    parts = load_safetensors(tmp_path / "parts" / "run" / "adapter" / "adapter_model.safetensors")
    assert sorted(whole) == sorted(parts) and all(torch.equal(whole[k], parts[k]) for k in whole)


def test_full_fine_tuning_of_a_4bit_checkpoint_is_refused_naming_the_way(tmp_path, checkpoint) -> None:
    folder, _, _ = checkpoint
    config = _run(tmp_path, folder, "qlora")
    result = train(config.replace(training=dataclasses.replace(config.training, mode="full")))
    assert result.status == "failed" and "training.mode = 'full' cannot train" in result.error
    assert "lora.variant = 'qlora'" in result.error


def test_a_float_variant_on_the_4bit_checkpoint_is_refused_naming_qlora(tmp_path, checkpoint) -> None:
    folder, _, _ = checkpoint
    events: list = []
    result = train(_run(tmp_path, folder, "lora"), events.append)
    assert result.status == "failed"
    assert "stored in 4 bits" in result.error and "lora.variant = 'qlora'" in result.error


def test_quantised_checkpoints_of_other_kinds_are_refused_by_name(tmp_path) -> None:
    model = _float_llama()
    folder = tmp_path / "gptq"
    _write_checkpoint(folder, model, {"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match=r"is a gptq-quantised checkpoint.*float weights \(or a \*-bnb-4bit one\)"):
        load_transformers(str(folder), task="causal-lm")


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path) -> None:
    folder = tmp_path / "broken"
    _write_checkpoint(folder, _float_llama())
    tensors = load_safetensors(folder / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\) the model needs: model\.norm\.weight"):
        load_transformers(str(folder), task="causal-lm")


def test_a_classifier_from_a_4bit_language_model_gets_a_fresh_head(checkpoint) -> None:
    folder, _, _ = checkpoint
    loaded = load_transformers(str(folder), task="sequence-classification", num_classes=3,
                               label_names=["a", "b", "c"])
    assert loaded.head == "score" and tuple(loaded.model.score.weight.shape) == (3, 64)
    assert not loaded.model.score.weight.is_meta and torch.isfinite(loaded.model.score.weight).all()
    assert any("'score' head is new" in note for note in loaded.notes)
