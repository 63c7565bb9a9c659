"""`lora-studio predict` and `generate` on the three things a trained model comes as (a run folder,
an adapter folder -- ours and PEFT's -- and a merged export): the same outputs for the same input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_studio.core import LoraConfig, attach, disable_adapters, export_merged, save_adapter
from lora_studio.core.cli import main
from lora_studio.core.data.digits import load_digits_tensors
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import CancelToken, train
from lora_studio.core.training.trained_run import load_for_inference

TOL = 1e-5  # the same float32 model rebuilt three ways: merging rounds each weight once
BIN = Path(sys.executable).parent
PROMPT = "the cat"
CORPUS = ["the cat sat on the mat.", "a dog ran to the park and back.", "once upon a time there was a cat."]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(capsys, *args: str):
    code, out, err = _cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


# -- a finished digits run: run folder, its adapter, its merged export ---------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    config = RunConfig(
        model=ModelConfig(source="demo", name="digits"),
        data=DataConfig(kind="digits", shift="rotate", max_samples=128),
        lora=LoraConfig(r=4, alpha=8, targets=["conv1", "conv2", "fc1"]),
        training=TrainingConfig(max_steps=6, batch_size=16, lr=2e-2, eval_every=0, checkpoint_every=0, device="cpu"),
        output=OutputConfig(dir=str(out), tensorboard=False),
    )
    assert train(config, lambda event: None, CancelToken()).status == "finished"
    return out


@pytest.fixture(scope="module")
def digit_pictures(tmp_path_factory) -> list[Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    images, _ = load_digits_tensors("rotate")
    paths = []
    for i in range(6):
        path = folder / f"d{i}.png"
        Image.fromarray((images[i, 0].numpy() * 255).round().astype("uint8")).save(path)
        paths.append(path)
    return paths


def test_predict_is_the_same_on_a_run_its_adapter_and_its_merged_export(capsys, digits_run, digit_pictures,
                                                                        tmp_path):
    code, _, err = _cli(capsys, "export", digits_run, "--adapter", tmp_path / "adapter")
    assert code == 0, err
    code, _, err = _cli(capsys, "export", digits_run, "--merged", tmp_path / "merged")
    assert code == 0, err
    run = _json(capsys, "predict", digits_run, *digit_pictures, "--base", "--top-k", "10")
    adapter = _json(capsys, "predict", tmp_path / "adapter", *digit_pictures, "--base", "--top-k", "10")
    merged = _json(capsys, "predict", tmp_path / "merged", *digit_pictures, "--top-k", "10")
    assert len(run) == len(adapter) == len(merged) == len(digit_pictures)
    for a, b, c in zip(run, adapter, merged):
        assert a["input"] == b["input"] == c["input"]
        for side in ("adapted", "base"):
            assert [s["label"] for s in a[side]] == [s["label"] for s in b[side]]
            assert [s["probability"] for s in a[side]] == pytest.approx([s["probability"] for s in b[side]],
                                                                        abs=TOL)
        by_label = {s["label"]: s["probability"] for s in c["adapted"]}
        assert [by_label[s["label"]] for s in a["adapted"]] == pytest.approx(
            [s["probability"] for s in a["adapted"]], abs=TOL)
        assert c["base"] is None  # a merged export carries no adapter
    # the adapted column is the trained model's own forward, the base column the pretrained digits net
    from PIL import Image

    loaded = load_for_inference(digits_run)
    pixels = torch.stack([loaded.image_transform(Image.open(p).convert("L")) for p in digit_pictures])
    with torch.no_grad():
        model = loaded.model.eval()
        adapted = torch.softmax(model(pixels), -1)
        with disable_adapters(model):
            base = torch.softmax(model(pixels), -1)
    for i, record in enumerate(run):
        assert record["adapted"][0]["label"] == str(int(adapted[i].argmax()))
        assert record["adapted"][0]["probability"] == pytest.approx(float(adapted[i].max()), abs=TOL)
        assert record["base"][0]["probability"] == pytest.approx(float(base[i].max()), abs=TOL)


def test_predict_table_csv_input_and_best(capsys, digits_run, digit_pictures, tmp_path):
    table = tmp_path / "inputs.csv"
    table.write_text("image\n" + "\n".join(p.name for p in digit_pictures[:3]) + "\n")
    for picture in digit_pictures[:3]:
        (tmp_path / picture.name).write_bytes(picture.read_bytes())
    code, out, err = _cli(capsys, "predict", digits_run, table, "--base")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["input", "adapted", "base", "changed"]
    assert sum(picture.name in out for picture in digit_pictures[:3]) == 3
    assert "predictions changed by the adapter" in lines[-1]
    from_csv = _json(capsys, "predict", digits_run, table)
    direct = _json(capsys, "predict", digits_run, *[tmp_path / p.name for p in digit_pictures[:3]])
    assert [r["adapted"] for r in from_csv] == [r["adapted"] for r in direct]
    code, _, err = _cli(capsys, "predict", digits_run, digit_pictures[0], "--which", "best")
    assert code == 0, err  # the run's best adapter (saved at its end: no evaluation ran)


def test_predict_errors_are_one_line_with_exit_2(capsys, digits_run, tmp_path):
    code, out, err = _cli(capsys, "predict", digits_run, tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "predict", tmp_path, "x")
    assert code == 2 and "not a run folder" in err
    code, _, err = _cli(capsys, "generate", digits_run, "hello")
    assert code == 2 and "causal language model" in err


def test_plain_merged_export_needs_its_architecture(capsys, tmp_path, digit_pictures):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    export_merged(model, tmp_path / "plain")
    code, _, err = _cli(capsys, "predict", tmp_path / "plain", digit_pictures[0])
    assert code == 2 and "--base-model" in err


# -- language models: a PEFT-written adapter on a tiny GPT-2 folder -----------------------------------
@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 with a byte-level BPE tokenizer, saved as a transformers folder (the base)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("gpt2") / "base"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    torch.manual_seed(0)
    # end-of-text at an id this random model never picks, so every comparison sees all its tokens
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=0, eos_token_id=len(tokenizer) - 1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def peft_adapter(gpt2_folder, tmp_path_factory) -> Path:
    peft = pytest.importorskip("peft")
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(gpt2_folder)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                      fan_in_fan_out=True, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gpt2_folder)
    return folder


def _peft_greedy(gpt2_folder: Path, adapter: Path, n: int, *, disabled: bool = False) -> str:
    import peft
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(gpt2_folder)
    model = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(gpt2_folder), str(adapter)).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        if disabled:
            with model.disable_adapter():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=n, pad_token_id=0)
        else:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=n, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_on_a_peft_adapter_matches_peft_and_its_merged_export(capsys, gpt2_folder, peft_adapter, tmp_path):
    n = 16
    result = _json(capsys, "generate", peft_adapter, PROMPT, "--temperature", "0", "--max-new-tokens", n, "--base")
    assert result["adapted"] == _peft_greedy(gpt2_folder, peft_adapter, n)
    assert result["base"] == _peft_greedy(gpt2_folder, peft_adapter, n, disabled=True)
    assert result["adapted"] != result["base"]
    loaded = load_for_inference(peft_adapter)
    export_merged(loaded.model, tmp_path / "merged", tokenizer=loaded.tokenizer)
    merged = _json(capsys, "generate", tmp_path / "merged", PROMPT, "--temperature", "0", "--max-new-tokens", n)
    assert merged["adapted"] == result["adapted"]
    # our own adapter folder of the same model: the same sampled text for the same seed
    save_adapter(loaded.model, tmp_path / "ours", base_model_name_or_path=f"transformers:{gpt2_folder}")
    sampled = [_json(capsys, "generate", folder, PROMPT, "--temperature", "1", "--seed", "3", "--max-new-tokens", n)
               for folder in (peft_adapter, tmp_path / "ours")]
    assert sampled[0]["adapted"] == sampled[1]["adapted"]


def test_generate_streams_to_the_terminal_and_names_a_missing_base(capsys, gpt2_folder, peft_adapter, tmp_path):
    code, out, err = _cli(capsys, "generate", peft_adapter, PROMPT, "--temperature", "0", "--max-new-tokens", "8",
                          "--base")
    assert code == 0, err
    text = _json(capsys, "generate", peft_adapter, PROMPT, "--temperature", "0", "--max-new-tokens", "8", "--base")
    assert out == f"--- adapted ---\n{PROMPT}{text['adapted']}\n--- base ---\n{PROMPT}{text['base']}\n"
    moved = tmp_path / "adapter"
    moved.mkdir()
    config = json.loads((peft_adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    (moved / "adapter_model.safetensors").write_bytes((peft_adapter / "adapter_model.safetensors").read_bytes())
    code, _, err = _cli(capsys, "generate", moved, PROMPT)
    assert code == 2 and "base_model_name_or_path" in err and "--base-model" in err
    code, out, err = _cli(capsys, "generate", moved, PROMPT, "--base-model", f"transformers:{gpt2_folder}",
                          "--temperature", "0", "--max-new-tokens", "8")
    assert code == 0, err
    assert out == f"{PROMPT}{text['adapted']}\n"


def test_the_console_script_predicts(digits_run, digit_pictures):
    done = subprocess.run([str(BIN / "lora-studio"), "predict", str(digits_run), str(digit_pictures[0]), "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["input"] == str(digit_pictures[0])


def test_predict_and_generate_have_help(capsys):
    for command in ("predict", "generate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--base-model" in capsys.readouterr().out


# -- the story demo: a causal-LM run folder ------------------------------------------------------------
@pytest.fixture(scope="module")
def story_run(tmp_path_factory) -> Path:
    import dataclasses

    from lora_studio.core.demo import demo_config
    from lora_studio.core.run_config import SamplesConfig

    out = tmp_path_factory.mktemp("story") / "run"
    try:
        config = demo_config("story", output_dir=out, steps=3)
    except (ValueError, FileNotFoundError):
        pytest.skip("the story demo is not in this checkout")
    config = config.replace(
        data=dataclasses.replace(config.data, max_length=48),
        training=dataclasses.replace(config.training, batch_size=4, eval_every=0, eval_at_start=False, lr=5e-2,
                                     device="cpu"),
        samples=SamplesConfig())
    assert train(config, lambda event: None, CancelToken()).status == "finished"
    return out


def test_generate_on_a_story_run_is_the_trained_model_and_its_pretrained_base(capsys, story_run):
    from lora_studio.core.inference import GenerationSettings, generate_text
    from lora_studio.core.models import load_demo_model

    n, prompt = 12, "Once upon a time"
    result = _json(capsys, "generate", story_run, prompt, "--temperature", "0", "--max-new-tokens", n, "--base")
    trained = load_for_inference(story_run)
    assert trained.label_names is None and trained.task == "causal-lm"
    greedy = GenerationSettings(max_new_tokens=n, temperature=0)
    assert result["adapted"] == generate_text(trained, prompt, greedy, sides=("adapted",))["adapted"]
    pretrained = load_demo_model("story")  # the base: the demo model as shipped, no adapter
    tokenizer = pretrained.tokenizer
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = pretrained.model.eval().generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                               max_new_tokens=n, pad_token_id=tokenizer.pad_token_id)
    assert result["base"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_ctrl_c_stops_a_generation_cleanly_with_exit_130(capsys, monkeypatch, peft_adapter):
    import signal

    import lora_studio.core.inference as inference

    real = inference.generate_stream
    seen = []

    def interrupted(*args, **kwargs):
        for piece in real(*args, **kwargs):
            seen.append(piece)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the CLI's handler sets its cancel token
            yield piece

    monkeypatch.setattr(inference, "generate_stream", interrupted)
    code, out, err = _cli(capsys, "generate", peft_adapter, PROMPT, "--max-new-tokens", "40", "--base")
    assert code == 130 and "stopped" in err and "Traceback" not in err
    assert len(seen) <= 4 and seen[-1].done  # one more (empty, done) piece after the Ctrl-C, then the end
    assert "--- base ---" not in out  # the base is not started after a stop
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


# -- a text classifier with a new head: labels from the run's data, the same base everywhere ----------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lora_studio.core.models import minilm_folder

    root = tmp_path_factory.mktemp("text")
    base = root / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rows = [("the match ended in a draw", "sport"), ("rain all day tomorrow", "weather"),
            ("the team won the cup", "sport"), ("sunny and warm", "weather"), ("stocks rose today", "money"),
            ("the bank raised rates", "money")] * 4
    data = root / "sentences.csv"
    data.write_text("text,label\n" + "\n".join(f"{t},{label}" for t, label in rows) + "\n")
    out = root / "run"
    config = RunConfig(
        model=ModelConfig(source="transformers", name=str(base), task="sequence-classification"),
        data=DataConfig(kind="text-classification", train=str(data), validation_split=0.25, max_length=16),
        lora=LoraConfig(r=4, alpha=8, targets=["query", "value"]),
        training=TrainingConfig(max_steps=3, batch_size=8, lr=5e-2, eval_every=0, checkpoint_every=0, device="cpu"),
        output=OutputConfig(dir=str(out), tensorboard=False),
    )
    assert train(config, lambda event: None, CancelToken()).status == "finished"
    return out


def test_text_run_adapter_and_merged_export_agree_and_name_the_data_labels(capsys, text_run, tmp_path):
    texts = ["the team lost the match", "cold and windy", "the bank cut rates"]
    assert _cli(capsys, "export", text_run, "--adapter", tmp_path / "adapter")[0] == 0
    assert _cli(capsys, "export", text_run, "--merged", tmp_path / "merged")[0] == 0
    run = _json(capsys, "predict", text_run, *texts, "--base", "--top-k", "3")
    adapter = _json(capsys, "predict", tmp_path / "adapter", *texts, "--base", "--top-k", "3")
    merged = _json(capsys, "predict", tmp_path / "merged", *texts, "--top-k", "3")
    for a, b, c in zip(run, adapter, merged):
        assert {s["label"] for s in a["adapted"]} == {"money", "sport", "weather"}  # the data's labels, sorted set
        for side, other in (("adapted", b), ("base", b), ("adapted", c)):
            assert [s["label"] for s in a[side]] == [s["label"] for s in other[side]]
            assert [s["probability"] for s in a[side]] == pytest.approx([s["probability"] for s in other[side]],
                                                                        abs=TOL)
    # a run's own adapter/ folder (written by the trainer) takes its names from the run around it
    assert load_for_inference(text_run / "adapter").label_names == ["money", "sport", "weather"]
