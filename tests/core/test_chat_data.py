"""Instruction and chat data: each format and file type read, bad rows refused by file and row, the
offline sources (Parquet, save_to_disk) and the hub refusal, the config fields, and a chat run of the
story demo through train() with its template saved beside the adapter and in a merged export."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from lora_studio.core.data.chat_dataset import ChatDataset
from lora_studio.core.data.chat_templates import BUILTIN_TEMPLATES
from lora_studio.core.data.collate import IGNORE_INDEX
from lora_studio.core.data.errors import DataError
from lora_studio.core.models.demo_models import story_folder
from lora_studio.core.run_config import DataConfig

CHATML = BUILTIN_TEMPLATES["chatml"]
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(story_folder()))


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def chatml(turns: list[dict]) -> str:
    return "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)


def trained_text(tokenizer, example: dict) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def test_alpaca_json_list_with_input_and_system(tmp_path, tokenizer):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "You are exact."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]), encoding="utf-8")
    data = ChatDataset(str(path), tokenizer, template=CHATML, max_length=256)
    assert (data.format, data.loss_on, len(data)) == ("alpaca", "response", 2)
    first = [{"role": "system", "content": "You are exact."},
             {"role": "user", "content": "Add the numbers.\n\n2 and 3"}]
    assert "".join(t for t, _ in data.pieces(0)) == chatml(first) + "<|im_start|>assistant\n5<|im_end|>\n"
    assert trained_text(tokenizer, data[0]) == "5<|im_end|>\n"
    assert "".join(t for t, _ in data.pieces(1)) == chatml([{"role": "user", "content": "Say hi."},
                                                              {"role": "assistant", "content": "Hi!"}])


def test_sharegpt_jsonl_roles_are_mapped(tmp_path, tokenizer):
    path = jsonl(tmp_path / "share.jsonl", [{"conversations": [
        {"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}])
    data = ChatDataset(path, tokenizer, template=CHATML, max_length=256)
    assert (data.format, data.loss_on) == ("sharegpt", "assistant")
    assert "".join(t for t, _ in data.pieces(0)) == chatml([{"role": "system", "content": "Be kind."},
                                                              {"role": "user", "content": "Hi"},
                                                              {"role": "assistant", "content": "Hey"}])
    assert trained_text(tokenizer, data[0]) == "Hey<|im_end|>\n"


def test_csv_with_a_json_encoded_messages_column(tmp_path, tokenizer):
    path = tmp_path / "chat.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "messages"])
        writer.writerow(["1", json.dumps(TURNS)])
    data = ChatDataset(str(path), tokenizer, template=CHATML, max_length=256)
    assert data.format == "messages" and "".join(t for t, _ in data.pieces(0)) == chatml(TURNS)


def test_text_and_prompt_response_rows_are_tokenised_as_they_are(tmp_path, tokenizer):
    eos = tokenizer.eos_token_id
    text = ChatDataset(jsonl(tmp_path / "t.jsonl", [{"text": "A cat sat."}]), tokenizer, max_length=64)
    ids = tokenizer("A cat sat.", add_special_tokens=False)["input_ids"] + [eos]
    assert text.format == "text" and text[0] == {"input_ids": ids, "labels": ids}
    path = jsonl(tmp_path / "pr.jsonl", [{"q": "Q: 2+2?", "a": " 4"}])
    pairs = ChatDataset(path, tokenizer, prompt_column="q", response_column="a", max_length=64)
    prompt = tokenizer("Q: 2+2?", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" 4", add_special_tokens=False)["input_ids"] + [eos]
    assert pairs.format == "prompt-response"
    assert pairs[0] == {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}
    everything = ChatDataset(path, tokenizer, prompt_column="q", response_column="a", loss_on="all", max_length=64)
    assert everything[0]["labels"] == prompt + answer


def test_examples_are_cut_at_max_length_and_counted(tmp_path, tokenizer):
    long_answer = " ".join(["word"] * 80)
    path = jsonl(tmp_path / "c.jsonl", [{"messages": [TURNS[0], {"role": "assistant", "content": long_answer}]},
                                        {"messages": TURNS}])
    short = len(tokenizer(chatml(TURNS), add_special_tokens=False)["input_ids"])  # an upper bound of row 2's ids
    data = ChatDataset(path, tokenizer, template=CHATML, max_length=short + 2)
    assert len(data[0]["input_ids"]) == len(data[0]["labels"]) == short + 2
    assert (data.truncated, data.counted) == (1, 2)
    assert len(data.full_example(0)["input_ids"]) > short + 2 >= len(data[1]["input_ids"])


BAD_ROWS = [  # (row, what the message must say)
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
     r"row 2, turn 2: the assistant turn has no 'content'"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]},
     r"row 2, turn 2: unknown 'role' 'robot' \(the roles are: system, user, assistant\)"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, r"row 2: no assistant turn"),
    ({"messages": TURNS + [{"role": "user", "content": "And?"}]}, r"row 2: the conversation ends on a user turn"),
    ({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}]},
     r"row 2, turn 1: a assistant turn where a user turn belongs"),
    ({"messages": []}, r"row 2: column 'messages' must be a non-empty list"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_a_malformed_row_is_refused_naming_file_and_row(tmp_path, tokenizer, row, message):
    path = jsonl(tmp_path / "bad.jsonl", [{"messages": TURNS}, row])
    with pytest.raises(DataError, match=r"bad\.jsonl, " + message):
        ChatDataset(path, tokenizer, template=CHATML)


def test_malformed_sharegpt_alpaca_and_csv_rows_name_file_and_row(tmp_path, tokenizer):
    share = jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "Hi"},
                                                            {"from": "tool", "value": "x"}]}])
    with pytest.raises(DataError, match=r"s\.jsonl, row 1, turn 2: unknown 'from' 'tool'"):
        ChatDataset(share, tokenizer, template=CHATML)
    alpaca = jsonl(tmp_path / "a.jsonl", [{"instruction": "Do it", "output": "Done"},
                                          {"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match=r"a\.jsonl, row 2: empty 'output'"):
        ChatDataset(alpaca, tokenizer, template=CHATML)
    path = tmp_path / "c.csv"
    path.write_text('messages\n"[{""role"": ""user""}"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.csv, row 1: column 'messages' is not a JSON list of turns"):
        ChatDataset(str(path), tokenizer, template=CHATML)


def test_a_conversation_ending_on_a_user_turn_trains_with_loss_on_all(tmp_path, tokenizer):
    turns = TURNS + [{"role": "user", "content": "Thanks"}]
    data = ChatDataset(jsonl(tmp_path / "c.jsonl", [{"messages": turns}]), tokenizer, template=CHATML, loss_on="all")
    assert data[0]["labels"] == data[0]["input_ids"]


def test_an_unknown_format_is_refused_listing_the_columns(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"cannot tell the data's format from its columns \(question, answer\)"):
        ChatDataset(jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}]), tokenizer, template=CHATML)


def test_parquet_and_save_to_disk_folders_read_offline(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": TURNS}, {"messages": [{"role": "user", "content": "Yo"},
                                               {"role": "assistant", "content": "Hey"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet", row_group_size=1)
    parquet = ChatDataset(str(tmp_path / "chat.parquet"), tokenizer, template=CHATML)
    assert len(parquet) == 2 and "".join(t for t, _ in parquet.pieces(1)) == chatml(rows[1]["messages"])
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(folder))
    saved = ChatDataset(str(folder), tokenizer, template=CHATML)
    assert len(saved) == 2 and saved[0] == parquet[0]
    assert len(ChatDataset(str(folder), tokenizer, template=CHATML, split="test")) == 1
    with pytest.raises(DataError, match=r"has no split 'dev'; its splits are: train, test"):
        ChatDataset(str(folder), tokenizer, template=CHATML, split="dev")


def test_a_hub_id_offline_is_refused_naming_the_id_and_hf_hub_offline(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'tatsu-lab/alpaca' is a Hugging Face hub dataset, but HF_HUB_OFFLINE"):
        ChatDataset("tatsu-lab/alpaca", tokenizer, template=CHATML)
    with pytest.raises(DataError, match=r"'owner/chats' is a Hugging Face hub dataset"):
        ChatDataset("hf:owner/chats", tokenizer, template=CHATML)


def test_config_fields_are_validated():
    DataConfig(kind="causal-lm", train="x.jsonl", format="sharegpt", chat_template="llama-3", loss_on="assistant")
    DataConfig(kind="causal-lm", train="x.jsonl", chat_template="{{ messages[0]['content'] }}")
    for bad, message in [({"format": "csv"}, "data.format must be one of"),
                         ({"chat_template": "vicuna"}, "data.chat_template must be one of"),
                         ({"loss_on": "prompt"}, "data.loss_on must be one of"),
                         ({"format": "text", "loss_on": "assistant"}, "data.loss_on must be 'all'"),
                         ({"format": "prompt-response"}, "data.prompt_column must be given"),
                         ({"dataset_split": ""}, "data.dataset_split must be a split name")]:
        with pytest.raises(ValueError, match=message):
            DataConfig(kind="causal-lm", train="x.jsonl", **bad)


def test_the_rendered_preview_shades_what_the_loss_trains(tmp_path, tokenizer):
    from lora_studio.core.data.preview import preview_rendered

    config = DataConfig(kind="causal-lm", train=jsonl(tmp_path / "c.jsonl", [{"messages": TURNS}]))
    preview = preview_rendered(config, tokenizer)
    assert (preview.format, preview.loss_on, preview.template_name, preview.total) == ("messages", "assistant",
                                                                                       "chatml", 1)
    sample = preview.samples[0]
    assert sample.text == chatml(TURNS)
    trained = [sample.text[a:b] for a, b, t in sample.spans if t]
    assert trained == ["Hello!<|im_end|>\n"]
    assert sample.trained_tokens == len(tokenizer("Hello!<|im_end|>\n", add_special_tokens=False)["input_ids"])


def _story_chat_run(tmp_path, animal: str, deed: str, *, steps: int):
    """The story demo trained a few steps on twelve one-answer chats about ``animal`` (run folder tmp/run)."""
    from lora_studio.core.demo import demo_config

    rows = [{"messages": [{"role": "user", "content": f"Tell me about {animal} {i}."},
                          {"role": "assistant", "content": f"{animal.title()} {i} {deed}, arr!"}]} for i in range(12)]
    config = demo_config("story", output_dir=tmp_path / "run", steps=steps)
    config = config.replace(data=DataConfig(kind="causal-lm", train=jsonl(tmp_path / "chat.jsonl", rows),
                                            validation_split=0.25, max_length=64))
    return config.replace(training=type(config.training)(max_steps=steps, batch_size=4, lr=1e-2, eval_every=0,
                                                         checkpoint_every=0, log_every=1))


def test_a_chat_run_of_the_story_demo_trains_and_saves_its_template(tmp_path):
    from lora_studio.core import train
    from lora_studio.core.adapter.config import LoraConfig
    from lora_studio.core.adapter.lifecycle import attach
    from lora_studio.core.data.bundle import build_datasets
    from lora_studio.core.disk.adapter_folder import (
        apply_saved_chat_template,
        load_adapter,
        save_adapter,
        write_chat_template,
    )
    from lora_studio.core.disk.merged_export import export_merged
    from lora_studio.core.models.demo_models import load_demo_model

    config = _story_chat_run(tmp_path, "cat", "sat on a mat", steps=3)
    result = train(config)
    assert result.status == "finished", result
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    # The bundle records the template it rendered with and gives it to the model's tokenizer.
    loaded = load_demo_model("story")
    bundle = build_datasets(config.data, loaded, None)
    assert bundle.chat_template == CHATML and loaded.tokenizer.chat_template == CHATML
    assert any("chatml" in w for w in bundle.warnings)
    # In the run folder, read back onto a fresh tokenizer; in an adapter folder (which still loads); and in a
    # merged export's tokenizer files.
    saved = write_chat_template(result.run_dir, bundle.chat_template)
    assert saved.read_text(encoding="utf-8") == CHATML
    fresh = load_demo_model("story").tokenizer
    assert apply_saved_chat_template(fresh, result.adapter_dir, result.run_dir) == CHATML
    assert fresh.chat_template == CHATML
    attach(loaded.model, LoraConfig(r=2, alpha=4, targets=["c_attn"]))
    adapter = save_adapter(loaded.model, tmp_path / "adapter", chat_template=bundle.chat_template)
    assert (adapter / "chat_template.jinja").read_text(encoding="utf-8") == CHATML
    load_adapter(load_demo_model("story").model, adapter)
    export = export_merged(loaded.model, tmp_path / "merged", tokenizer=loaded.tokenizer, chat_template=CHATML)
    assert (export.path / "chat_template.jinja").read_text(encoding="utf-8") == CHATML
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(export.path)).chat_template == CHATML


def test_packing_wraps_chat_examples_whole(tmp_path):
    from lora_studio.core.data.bundle import build_datasets
    from lora_studio.core.data.packing import PackedDataset
    from lora_studio.core.models.demo_models import load_demo_model

    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A" * (i + 1)}]}
            for i in range(6)]
    path = jsonl(tmp_path / "c.jsonl", rows)
    loaded = load_demo_model("story")
    plain = build_datasets(DataConfig(kind="causal-lm", train=path, validation_split=0.0, max_length=256),
                           loaded, None).train
    packed = build_datasets(DataConfig(kind="causal-lm", train=path, validation_split=0.0, max_length=256,
                                       packing=True), loaded, None).train
    assert isinstance(packed, PackedDataset)
    # Every example goes in whole, in order: the packed rows hold exactly the unpacked examples' ids.
    assert [t for i in range(len(packed)) for t in packed[i]["input_ids"]] == \
        [t for i in range(len(plain)) for t in plain[i]["input_ids"]]


def test_the_rendered_preview_of_a_text_file_trains_every_token(tmp_path, tokenizer):
    from lora_studio.core.data.preview import preview_rendered

    path = tmp_path / "stories.txt"
    path.write_text("One cat.\n\nTwo dogs.\n", encoding="utf-8")
    preview = preview_rendered(DataConfig(kind="causal-lm", train=str(path)), tokenizer)
    assert (preview.format, preview.loss_on, preview.template_name, preview.total) == ("text", "all", None, 2)
    assert [s.text for s in preview.samples] == ["One cat." + tokenizer.eos_token, "Two dogs." + tokenizer.eos_token]
    assert all(s.trained_tokens == s.tokens for s in preview.samples)


def test_the_plain_data_preview_reads_chat_rows_without_a_tokenizer(tmp_path):
    from lora_studio.core.data.preview import preview_data

    path = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": "Be kind."}] + TURNS}])
    preview = preview_data(DataConfig(kind="causal-lm", train=path))
    assert preview.total == 1 and preview.columns == ("messages",)
    assert (preview.samples[0].text, preview.samples[0].response) == ("system: Be kind.\nuser: Hi", "Hello!")
    assert preview.note == "format: messages, loss on: assistant"


def test_alpaca_history_pairs_come_before_the_instruction(tmp_path, tokenizer):
    path = jsonl(tmp_path / "a.jsonl", [{"instruction": "And 3?", "output": "Three", "history": [["Say 2", "Two"]]},
                                        {"instruction": "x", "output": "y", "history": [["only one"]]}])
    with pytest.raises(DataError, match=r"a\.jsonl, row 2: 'history' item 1 must be an \[instruction, answer\] pair"):
        ChatDataset(path, tokenizer, template=CHATML)
    path = jsonl(tmp_path / "b.jsonl", [{"instruction": "And 3?", "output": "Three", "history": [["Say 2", "Two"]]}])
    data = ChatDataset(path, tokenizer, template=CHATML)
    turns = [{"role": "user", "content": "Say 2"}, {"role": "assistant", "content": "Two"},
             {"role": "user", "content": "And 3?"}, {"role": "assistant", "content": "Three"}]
    assert "".join(t for t, _ in data.pieces(0)) == chatml(turns)
    assert trained_text(tokenizer, data[0]) == "Three<|im_end|>\n"  # alpaca's default: the response only


def test_a_chat_runs_template_is_saved_by_the_run_and_comes_back_with_every_load(tmp_path):
    from transformers import AutoTokenizer

    from lora_studio.core import train
    from lora_studio.core.data.checks import check_data
    from lora_studio.core.disk.merged_export import export_merged
    from lora_studio.core.training.trained_run import load_for_inference, load_trained_run

    config = _story_chat_run(tmp_path, "dog", "dug a hole", steps=2)
    assert "checked, row by row, when training starts" in check_data(config.data).note  # the window's check
    result = train(config)
    assert result.status == "finished", result
    run = tmp_path / "run"
    assert (run / "chat_template.jinja").read_text(encoding="utf-8") == CHATML  # written by the run itself
    assert (run / "adapter" / "chat_template.jinja").read_text(encoding="utf-8") == CHATML
    assert load_trained_run(run).tokenizer.chat_template == CHATML
    opened = load_for_inference(run / "adapter")  # an adapter folder opened on its own
    assert opened.tokenizer.chat_template == CHATML
    merged = export_merged(opened.model, tmp_path / "merged", tokenizer=opened.tokenizer)
    assert AutoTokenizer.from_pretrained(str(merged.path)).chat_template == CHATML
