"""The built-in demos, offline on a CPU: ``lora-studio demo digits|text|story|chat``.

* ``digits`` — a small CNN pretrained on upright 8×8 digits meets the same digits
  turned a quarter turn, where it is barely better than guessing; a rank-4 LoRA
  adapter on its convolutions and first linear layer (about 13% of the weights)
  recovers the accuracy in a few seconds.
* ``text`` — the pretrained all-MiniLM-L6-v2 encoder learns to sort short sentences
  into four topics (``resources/demo/sentences.csv``) with LoRA on its attention.
* ``story`` — a small GPT-2 pretrained on short simple stories learns to tell them in a
  pirate's voice ("th'", "ye", "matey", "arr!"; ``resources/demo/story/pirate.txt``) with LoRA on
  its attention and MLP projections; the samples' continuations of "Once upon a time" show the
  new voice appear while it trains (perplexity on the pirate stories falls from hundreds to about 2).
* ``chat`` — instruction tuning: the same GPT-2 learns to hold a chat (chatml turns, short
  questions answered "Arr! ... matey!", or plainly after the system turn "Answer plainly, like a
  teacher.") from ``resources/demo/chat.jsonl`` (made by ``resources/make_chat_demo.py``), the loss
  on the assistant's answers only and the conversations packed into full rows; its samples answer
  held-out questions in the tuned format.

Each demo is an ordinary run config handed to :func:`train`, so what a demo does,
a user's ``RUN.toml`` can do too (``demo_config`` shows it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .adapter.config import LoraConfig
from .data import demo_sentences_path
from .disk.resource_files import demo_file
from .run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, SamplesConfig, TrainingConfig
from .training import CancelToken, EvalMetrics, Event, TrainResult, train

DEMOS = ("digits", "text", "story", "chat")
STORY_TASK_DATA = "story/pirate.txt"  # the story demo's LoRA task, one story per paragraph
STORY_PROMPTS = ["Once upon a time", "One day, a little girl named Lily", "There was once a"]
"""Prompts the story demo's samples continue: plain story openings, so the pirate voice is what changes."""
CHAT_TASK_DATA = "chat.jsonl"  # the chat demo's conversations (OpenAI messages, a third with a system turn)
CHAT_PLAIN_SYSTEM = "Answer plainly, like a teacher."  # resources/make_chat_demo.py PLAIN: no pirate voice
CHAT_QUESTIONS = ["Where does Ruby play? Ruby likes the beach.", "What does the owl like to eat? I think it likes pie."]
"""Questions the chat demo's samples ask (as user turns, rendered by the run's chat template): names and
animals none of its conversations has."""


def demo_config(name: str, *, output_dir: str | Path, steps: int | None = None) -> RunConfig:
    """The run config of demo ``name`` writing to ``output_dir`` (``steps`` overrides its length)."""
    output = OutputConfig(dir=str(output_dir), overwrite=True, tensorboard=False)
    if name == "digits":
        return RunConfig(
            model=ModelConfig(source="demo", name="digits"),
            data=DataConfig(kind="digits", shift="rotate"),
            lora=LoraConfig(r=4, alpha=8, targets=["conv1", "conv2", "fc1"]),
            training=TrainingConfig(max_steps=steps or 300, batch_size=32, lr=1e-2, eval_every=100,
                                    checkpoint_every=100, eval_at_start=True, log_every=10),
            output=output,
        )
    if name == "text":
        return RunConfig(
            model=ModelConfig(source="demo", name="text"),
            data=DataConfig(kind="text-classification", train=demo_sentences_path(), validation_split=0.25,
                            max_length=32),
            lora=LoraConfig(r=8, alpha=16, targets=["query", "value"]),
            training=TrainingConfig(max_steps=steps or 60, batch_size=16, lr=5e-3, eval_every=20, checkpoint_every=0,
                                    eval_at_start=True, eval_batch_size=48, log_every=5),
            output=output,
        )
    if name == "story":
        return RunConfig(
            model=ModelConfig(source="demo", name="story"),
            data=DataConfig(kind="causal-lm", train=str(demo_file(STORY_TASK_DATA)), validation_split=0.1,
                            max_length=192),
            lora=LoraConfig(r=8, alpha=16, targets=["c_attn", "c_proj", "c_fc"]),
            training=TrainingConfig(max_steps=steps or 100, batch_size=16, lr=1e-2, warmup_steps=10, eval_every=20,
                                    checkpoint_every=0, eval_at_start=True, eval_batch_size=32, log_every=5),
            samples=SamplesConfig(prompts=list(STORY_PROMPTS), max_new_tokens=32),
            output=output,
        )
    if name == "chat":
        return RunConfig(
            model=ModelConfig(source="demo", name="story"),
            data=DataConfig(kind="causal-lm", train=str(demo_file(CHAT_TASK_DATA)), format="messages",
                            chat_template="chatml", loss_on="assistant", validation_split=0.1, max_length=256,
                            packing=True),
            lora=LoraConfig(r=8, alpha=16, targets=["c_attn", "c_proj", "c_fc"]),
            training=TrainingConfig(max_steps=steps or 150, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=50,
                                    checkpoint_every=0, eval_at_start=True, eval_batch_size=32, log_every=5),
            samples=SamplesConfig(prompts=list(CHAT_QUESTIONS), max_new_tokens=24),
            output=output,
        )
    raise ValueError(f"unknown demo {name!r}; the demos are: {', '.join(DEMOS)}")


def run_demo(
    name: str, *, output_dir: str | Path, steps: int | None = None, on_event: Callable[[Event], None] | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, object]:
    """Run demo ``name``; returns the evaluation before and after training and the run's result."""
    evals: list[EvalMetrics] = []

    def watch(event: Event) -> None:
        if isinstance(event, EvalMetrics):
            evals.append(event)
        if on_event is not None:
            on_event(event)

    result: TrainResult = train(demo_config(name, output_dir=output_dir, steps=steps), watch, cancel)
    before = dataclasses.asdict(evals[0]) if evals else None
    after = dataclasses.asdict(evals[-1]) if len(evals) > 1 else None
    return {"before": before, "after": after, "result": result}
