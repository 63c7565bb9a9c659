"""Generation speed: the Try tab's hand-written loop against transformers' own ``generate``.

On the story demo's causal LM (``load_demo_model("story")``, a 4-layer, 128-wide GPT-2; a GPT-2
of that size built from a config when the demo is not there), with a LoRA adapter (r=8 on
``c_attn``, ``c_proj``, ``c_fc``; random B, so it changes the output) attached by our ``attach``:

* ``hf``       -- ``model.generate(do_sample=False)``, greedy, the same prompt and number of new
  tokens; time to first token from a streamer's first ``put`` after the prompt's;
* ``adapted``  -- :func:`generate_stream` on the adapted side only, greedy;
* ``both``     -- :func:`generate_stream` on both sides (adapted and base interleaved, the base
  with adapters disabled around its forward): twice the tokens.

The arms run one after another in each round (many rounds), and medians are reported, because
the development machine is shared and noisy.  End-of-text is switched off
tokenizer's stop ids for the run (``min_new_tokens`` for ``generate``, ``stop_at_end_of_text=False``
for ours), so every arm generates exactly ``--new-tokens`` tokens.

    .venv/bin/python bench/bench_generate.py                       # 64 new tokens, 7 rounds
    .venv/bin/python bench/bench_generate.py --new-tokens 128 --rounds 11 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from lora_studio.core import LoraConfig, attach
from lora_studio.core.inference import GenerationSettings, generate_stream
from lora_studio.core.models import LoadedModel

PROMPT = "Once upon a time, there was a little girl named Lily. She"


def _model() -> tuple[LoadedModel, str]:
    from lora_studio.core.models import load_demo_model

    try:
        return load_demo_model("story"), "story demo"
    except (FileNotFoundError, ValueError, OSError):
        return _config_gpt2(), "GPT-2 from a config (n_layer 4, n_embd 128; the story demo is not there)"


def _config_gpt2() -> LoadedModel:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([PROMPT, "the cat sat on the mat and the dog ran to the park"] * 50, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=128, n_layer=4, n_head=4, n_positions=256))
    return LoadedModel(model=model.eval(), task="causal-lm", forward_style="transformers", tokenizer=tokenizer)


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.puts, self.first = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def _hf(loaded: LoadedModel, ids: torch.Tensor, n: int) -> tuple[float, float, int]:
    clock = _FirstTokenClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                    min_new_tokens=n, pad_token_id=0, streamer=clock)
    end = time.perf_counter()
    return clock.first - start, end - start, out.shape[1] - ids.shape[1]


def _ours(loaded: LoadedModel, n: int, sides: tuple[str, ...]) -> tuple[float, float, int]:
    settings = GenerationSettings(max_new_tokens=n, temperature=0, chat_template=False, stop_at_end_of_text=False)
    start = time.perf_counter()
    first, tokens = None, 0
    for piece in generate_stream(loaded, PROMPT, settings, sides=sides):
        if first is None:
            first = time.perf_counter()
        tokens += piece.token_id is not None
    return first - start, time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    loaded, what = _model()
    attach(loaded.model, LoraConfig(r=8, alpha=16, targets=["c_attn", "c_proj", "c_fc"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    loaded.model.eval()
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    n = args.new_tokens
    parameters = sum(p.numel() for p in loaded.model.parameters())
    print(f"model: {what}, {parameters:,} parameters (adapter included); prompt {ids.shape[1]} tokens, "
          f"{n} new tokens, {torch.get_num_threads()} threads, {args.rounds} rounds (median)")
    arms = {"hf": lambda: _hf(loaded, ids, n), "adapted": lambda: _ours(loaded, n, ("adapted",)),
            "both": lambda: _ours(loaded, n, ("adapted", "base"))}
    for arm in arms.values():  # warm-up
        arm()
    times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in arms}
    for _ in range(args.rounds):
        for key, arm in arms.items():
            times[key].append(arm())
    medians = {}
    print(f"{'arm':<10}{'first token ms':>16}{'total ms':>11}{'tokens':>8}{'tokens/s':>11}")
    for key, runs in times.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        total = statistics.median(r[1] for r in runs) * 1000
        tokens = runs[0][2]
        medians[key] = (ttft, total, tokens)
        print(f"{key:<10}{ttft:>16.1f}{total:>11.1f}{tokens:>8}{tokens / total * 1000:>11.1f}")
    hf_ttft, hf_total, hf_tokens = medians["hf"]
    for key in ("adapted", "both"):
        ttft, total, tokens = medians[key]
        rate = (tokens / total) / (hf_tokens / hf_total)
        print(f"{key} / hf: first token {ttft / hf_ttft:.2f}x the time, tokens/s {rate:.2f}x"
              + (" (both sides' tokens counted)" if key == "both" else ""))


if __name__ == "__main__":
    main()
