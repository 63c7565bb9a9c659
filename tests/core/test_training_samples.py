"""The run's fixed samples: written to metrics.jsonl at every evaluation, the same examples at
every step and after a resume; generations for a causal LM; predicted labels for classifiers."""

import csv
import dataclasses
import shutil

import pytest
import torch
from run_configs import digits_run

from lora_studio.core.data.digits import digits_split, load_digits_tensors
from lora_studio.core.demo import demo_config
from lora_studio.core.inference import GenerationSettings, generate_text
from lora_studio.core.run_config import DataConfig, ModelConfig, SamplesConfig
from lora_studio.core.training import (
    CancelToken,
    Samples,
    StepMetrics,
    TrainingWarning,
    build_model,
    load_trained_run,
    read_metrics,
    resume_run,
    train,
)
from lora_studio.core.training.samples import sample_indices


def _records(run_dir, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["event"] == kind]


def _digit_truth() -> dict[int, str]:
    """The true label of each digits validation example, by its index in the validation set."""
    _, labels = load_digits_tensors()
    _, validation = digits_split(len(labels))
    return {i: str(int(labels[v])) for i, v in enumerate(validation.tolist())}


def test_digits_samples_at_every_evaluation_with_the_same_examples(tmp_path) -> None:
    config = digits_run(tmp_path, max_steps=6, eval_every=3, eval_at_start=True)
    result = train(config)
    assert result.status == "finished", result.error
    records = read_metrics(tmp_path)
    evals = [r["step"] for r in records if r["event"] == "EvalMetrics"]
    samples = _records(tmp_path, "Samples")
    assert evals == [0, 3, 6] and [s["step"] for s in samples] == evals
    for i, record in enumerate(records):  # each Samples follows its step's EvalMetrics at once
        if record["event"] == "Samples":
            assert records[i - 1]["event"] == "EvalMetrics" and records[i - 1]["step"] == record["step"]
    inputs = [[item["input"] for item in s["items"]] for s in samples]
    assert all(len(x) == config.samples.count for x in inputs)
    assert inputs[0] == inputs[1] == inputs[2] and len(set(inputs[0])) == config.samples.count
    truth = _digit_truth()
    names = [str(k) for k in range(10)]
    for s in samples:
        for item in s["items"]:
            index = int(item["input"].removeprefix("validation example #"))
            assert item["target"] == truth[index]
            assert item["output"] in names
            assert item["correct"] == (item["output"] == item["target"])
            assert 1 / 10 <= item["probability"] <= 1.0  # the argmax of ten probabilities


def test_sample_draw_follows_the_seed() -> None:
    assert sample_indices(359, 8, 0) == sample_indices(359, 8, 0)
    assert sample_indices(359, 8, 0) != sample_indices(359, 8, 1)
    assert sorted(sample_indices(5, 8, 0)) == [0, 1, 2, 3, 4]  # fewer examples than asked: all of them


def test_samples_are_the_same_examples_after_a_resume(tmp_path) -> None:
    cancel = CancelToken()

    def on_event(event) -> None:
        if isinstance(event, StepMetrics) and event.step == 3:
            cancel.cancel()

    config = digits_run(tmp_path, max_steps=8, eval_every=2, eval_at_start=True)
    config = config.replace(samples=SamplesConfig(count=5, seed=11))
    assert train(config, on_event, cancel).status == "cancelled"
    assert resume_run(tmp_path).status == "finished"
    samples = _records(tmp_path, "Samples")
    assert [s["step"] for s in samples] == [0, 2, 4, 6, 8]  # steps 4.. come from the resumed process
    inputs = {tuple(item["input"] for item in s["items"]) for s in samples}
    assert len(inputs) == 1 and len(next(iter(inputs))) == 5


def test_no_samples_when_count_is_zero(tmp_path) -> None:
    config = digits_run(tmp_path, max_steps=2, eval_at_start=True).replace(samples=SamplesConfig(count=0))
    events: list = []
    assert train(config, events.append).status == "finished"
    assert not any(isinstance(e, Samples) for e in events) and not _records(tmp_path, "Samples")


def test_full_fine_tuning_gets_samples(tmp_path) -> None:
    config = digits_run(tmp_path, max_steps=2, mode="full").replace(samples=SamplesConfig(count=3))
    assert train(config).status == "finished"
    samples = _records(tmp_path, "Samples")
    assert [s["step"] for s in samples] == [2] and len(samples[0]["items"]) == 3


def test_text_samples_show_the_sentences(tmp_path) -> None:
    config = demo_config("text", output_dir=tmp_path, steps=2)
    config = config.replace(samples=SamplesConfig(count=4))
    assert train(config).status == "finished"
    with open(config.data.train, encoding="utf-8-sig", newline="") as handle:
        rows = {row["text"]: row["label"].strip() for row in csv.DictReader(handle)}
    samples = _records(tmp_path, "Samples")
    assert [s["step"] for s in samples] == [0, 2]
    for s in samples:
        assert len(s["items"]) == 4
        for item in s["items"]:
            assert item["input"] in rows and item["target"] == rows[item["input"]]  # as written in the file


def test_a_classifier_without_validation_has_no_samples_and_says_nothing(tmp_path) -> None:
    config = demo_config("text", output_dir=tmp_path, steps=2)
    config = config.replace(data=dataclasses.replace(config.data, validation_split=0.0))
    events: list = []
    assert train(config, events.append).status == "finished"
    assert not any(isinstance(e, Samples) for e in events)
    assert not any("sample" in e.message for e in events if isinstance(e, TrainingWarning))


# --- causal LM: a tiny GPT-2 built from a config, with the MiniLM package's tokenizer (offline) ---

PROMPTS = ["the cat", "once upon a time"]


@pytest.fixture(scope="module")
def tiny_gpt2_folder(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lora_studio.core.models.demo_models import minilm_folder

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    source = minilm_folder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=30522, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    data = folder / "stories.txt"
    data.write_text("\n\n".join(f"the cat sat on mat number {i} and the dog ran home" for i in range(40)),
                    encoding="utf-8")
    return folder


def _causal_run(folder, out, **samples):
    base = digits_run(out, max_steps=4, eval_every=2, eval_at_start=True, lr=1e-2)
    return base.replace(
        model=ModelConfig(source="transformers", name=str(folder), task="causal-lm"),
        data=DataConfig(kind="causal-lm", train=str(folder / "stories.txt"), validation_split=0.25, max_length=32),
        lora=dataclasses.replace(base.lora, targets=["c_attn"]),
        samples=SamplesConfig(**samples),
    )


def test_causal_lm_samples_are_the_adapted_models_generations(tiny_gpt2_folder, tmp_path) -> None:
    config = _causal_run(tiny_gpt2_folder, tmp_path, prompts=PROMPTS, max_new_tokens=6)
    result = train(config)
    assert result.status == "finished", result.error
    samples = _records(tmp_path, "Samples")
    assert [s["step"] for s in samples] == [0, 2, 4]
    for s in samples:
        assert [item["input"] for item in s["items"]] == PROMPTS
        assert all(isinstance(item["output"], str) for item in s["items"])  # a random model may say only specials
        assert all(item["target"] is None and item["correct"] is None for item in s["items"])
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0, seed=config.training.seed, chat_template=True)
    # step 0: the adapter starts as a no-op, so the samples are what the freshly built model says
    fresh, _, _ = build_model(config)
    assert [generate_text(fresh, p, settings, sides=("adapted",))["adapted"] for p in PROMPTS] == \
        [item["output"] for item in samples[0]["items"]]
    # the last step: what the final checkpoint's model says (greedy: same weights, same text)
    trained = load_trained_run(tmp_path)
    assert [generate_text(trained, p, settings, sides=("adapted",))["adapted"] for p in PROMPTS] == \
        [item["output"] for item in samples[-1]["items"]]


def test_causal_lm_prompts_without_validation_warn_once(tiny_gpt2_folder, tmp_path) -> None:
    config = _causal_run(tiny_gpt2_folder, tmp_path, prompts=PROMPTS, max_new_tokens=2)
    config = config.replace(data=dataclasses.replace(config.data, validation_split=0.0))
    events: list = []
    assert train(config, events.append).status == "finished"
    assert not any(isinstance(e, Samples) for e in events)
    warnings = [e.message for e in events if isinstance(e, TrainingWarning) and "samples.prompts" in e.message]
    assert len(warnings) == 1 and "validation" in warnings[0]


def test_causal_lm_without_prompts_has_no_samples(tiny_gpt2_folder, tmp_path) -> None:
    config = _causal_run(tiny_gpt2_folder, tmp_path)
    assert train(config).status == "finished"
    assert not _records(tmp_path, "Samples")


def test_prompts_for_a_classifier_are_named_and_the_examples_still_shown(tmp_path) -> None:
    config = digits_run(tmp_path, max_steps=2).replace(samples=SamplesConfig(prompts=["hello"], count=2))
    events: list = []
    assert train(config, events.append).status == "finished"
    warnings = [e.message for e in events if isinstance(e, TrainingWarning) and "samples.prompts" in e.message]
    assert len(warnings) == 1 and "classifier" in warnings[0]
    assert [len(e.items) for e in events if isinstance(e, Samples)] == [2]


def test_image_folder_samples_name_their_files(tmp_path) -> None:
    from PIL import Image

    images, labels = load_digits_tensors()
    root = tmp_path / "images"
    names = [f"digit {d}" for d in range(10)]  # the digits head has ten outputs; two folders hold images
    for name, digit in ((names[0], 0), (names[1], 1)):
        (root / name).mkdir(parents=True)
        picks = (labels == digit).nonzero().flatten()[:12].tolist()
        for k in picks:
            Image.fromarray((images[k, 0].numpy() * 255).astype("uint8"), mode="L").save(root / name / f"{k}.png")
    config = digits_run(tmp_path / "run", max_steps=2, batch_size=4).replace(
        data=DataConfig(kind="image-folder", train=str(root), validation_split=0.5, label_names=names),
        samples=SamplesConfig(count=4),
    )
    result = train(config)
    assert result.status == "finished", result.error
    (samples,) = _records(tmp_path / "run", "Samples")
    assert len(samples["items"]) == 4
    for item in samples["items"]:
        path = root / item["target"]
        assert item["input"].startswith(str(path)) and item["input"].endswith(".png")  # its class's folder


def test_samples_as_markdown_for_tensorboard() -> None:
    from lora_studio.core.training import SampleResult
    from lora_studio.core.training.metrics_log import samples_markdown

    text = samples_markdown(Samples(3, [SampleResult("a|b\nc", "7", target="1", correct=False, probability=0.9),
                                        SampleResult("once", " upon")]))
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2] == "| a\\|b c | 7 ✗ | 1 |" and lines[3] == "| once |  upon |  |"
