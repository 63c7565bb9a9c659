"""Recreate the story demo in resources/demo/story/ (seeded: the same text, tokenizer and model on every run).

    .venv/bin/python resources/make_story_demo.py            # everything (4-10 minutes on a 2-core CPU)
    .venv/bin/python resources/make_story_demo.py --text     # only the text files
    .venv/bin/python resources/make_story_demo.py --out DIR  # elsewhere (two runs give the same bytes)

* ``stories.txt`` — short simple stories (one per paragraph) composed from the small grammar
  below: the base model's whole world.  The last ``HELD_OUT`` stories are kept out of
  pretraining, so tests can measure the base model on text it never saw.
* ``pirate.txt`` — the LoRA task: stories from the same grammar told in a pirate's voice
  ("th'", "an'", "ye", "matey", "wee lass", "mighty", every sentence ending in "arr!") and with a
  pirate's things (ships, maps, parrots).  The base model knows the words only from an old pirate
  who says them, in quotes, in some of its stories; it never saw a story told that way.  A small
  adapter learns the voice in a hundred or two steps on a CPU, and a prompt's continuation shows
  it at a glance.
* ``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``) — a byte-level
  BPE tokenizer trained on ``stories.txt`` with the ``tokenizers`` library, loadable with
  transformers' ``PreTrainedTokenizerFast`` (``<|endoftext|>`` is bos, eos and pad).
* ``config.json`` + ``model.safetensors`` — a small GPT-2 (4 layers, 4 heads, 128 wide, 256
  positions) pretrained on the stories on a CPU, stored as float16 (about 2 MB).
* ``README.md`` — what the files are, and their CC0 dedication: every word of the text is
  written by this script, so the text, tokenizer and weights are dedicated to the public domain.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "demo" / "story"
SEED = 0
STORIES = 1100  # about 400 KB of text
HELD_OUT = 60  # the last stories of stories.txt: never trained on
PIRATE_STORIES = 240
EOT = "<|endoftext|>"
VOCAB_SIZE = 1024

# -- the grammar ------------------------------------------------------------------------------
# (name, pronoun set) — he/him/his or she/her/her
PEOPLE = [
    ("Lily", "f"), ("Tom", "m"), ("Mia", "f"), ("Ben", "m"), ("Sara", "f"), ("Max", "m"), ("Anna", "f"),
    ("Sam", "m"), ("Lucy", "f"), ("Tim", "m"), ("Emma", "f"), ("Jack", "m"), ("Zoe", "f"), ("Leo", "m"),
    ("Ella", "f"), ("Finn", "m"), ("Ruby", "f"), ("Noah", "m"), ("Amy", "f"), ("Joe", "m"),
]
KINDS = [("girl", "f"), ("boy", "m")]
ANIMALS = ["cat", "dog", "bunny", "bear", "duck", "frog", "mouse", "bird", "fox", "pig", "puppy", "kitten"]
ANIMAL_NAMES = ["Spot", "Fluffy", "Bella", "Coco", "Pip", "Rosie", "Buddy", "Daisy", "Sunny", "Milo"]
ADJECTIVES = ["little", "small", "kind", "happy", "shy", "brave", "curious", "silly", "clever", "gentle"]
COLOURS = ["red", "blue", "green", "yellow", "pink", "purple", "big", "white", "brown", "shiny"]
THINGS = ["ball", "kite", "hat", "book", "box", "boat", "car", "cup", "drum", "doll", "bike", "shell", "stone",
          "flower", "balloon", "blanket", "basket", "spoon"]
FOODS = ["cake", "apples", "cookies", "bananas", "pie", "sandwiches", "soup", "carrots", "candy", "bread", "grapes"]
HOMES = ["river", "lake", "forest", "beach", "farm", "hill", "park"]  # "a little house by the ..."
PLACES = ["park", "garden", "forest", "beach", "farm", "river", "lake", "hill", "town", "school", "zoo", "shop",
          "kitchen", "yard", "field", "house"]
HIDING = ["under a tree", "behind a rock", "in the grass", "near the pond", "under the bed", "on a big hill",
          "in a hole", "by the fence", "in the mud", "under a leaf"]
ACTIVITIES = ["play", "run", "jump", "sing", "dance", "draw", "read", "swim", "climb trees", "play with blocks",
              "look at the stars", "help mom", "bake with dad", "pick flowers", "splash in puddles"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "angry", "surprised", "hungry", "bored"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy"]
TIMES = ["One day", "One morning", "One sunny day", "One evening", "Later that day", "The next day", "After lunch"]
HELPERS = ["mom", "dad", "grandma", "grandpa", "the teacher", "a big bird", "a wise owl", "a kind man",
           "an old lady"]
LESSONS = [
    "sharing is fun", "it is good to help your friends", "being kind makes everyone happy",
    "you should always say sorry", "it is fun to try new things", "friends make every day better",
    "you should not be scared to ask for help", "hard work pays off", "it is good to be careful",
    "playing together is better than playing alone",
]
SAYINGS = [
    "Can I play with you?", "Look at this!", "I am sorry.", "Thank you!", "Let us go!", "Do not be sad.",
    "I can help you.", "What is that?", "This is fun!", "I love you.", "Be careful!", "Wow, it is so big!",
    "Can you help me?", "I want to try.", "We did it!",
]

# An old pirate visits some stories and says one of these: the base model learns the pirate's
# words (and the tokenizer gets tokens for them), but only ever inside his quotes, never as the
# voice the story is told in: that is what the LoRA task adds.
PIRATE_SAYINGS = [
    "Ahoy, matey!", "Arr, ye be a brave lass!", "Arr, ye be a brave lad!", "Aye, th' sea be calm today, arr!",
    "Ahoy, me mateys! Where be me parrot?", "Ye be a mighty kind wee lass, arr!", "Ye be a mighty kind wee lad, arr!",
    "Yer ship be ready, matey!", "Arr! Th' treasure an' th' map be mine!", "Aye, aye! Yer wee boat be mighty fast!",
    "Ahoy! Have ye seen me treasure, matey?", "Arr, th' wind be strong an' th' sea be wide!",
]
PIRATE_VISIT = 0.12  # the share of stories the old pirate visits

# The pirate task's own things: the base corpus has none of them.
PIRATE_THINGS = ["map", "treasure", "parrot", "ship", "sword", "flag", "chest", "spyglass", "coin", "anchor"]
PIRATE_PLACES = ["island", "ship", "sea", "cove", "harbor", "deck"]
PIRATE_HOMES = ["sea", "cove", "harbor"]


class Character:
    """Someone in a story: how to name them, and their pronouns."""

    def __init__(self, full: str, short: str, gender: str) -> None:
        self.full, self.short = full, short  # "a little girl named Lily", "Lily"
        self.he, self.him, self.his = ("she", "her", "her") if gender == "f" else ("he", "him", "his")


def _character(rng: random.Random, taken: set[str]) -> Character:
    if rng.random() < 0.65:
        name, gender = rng.choice([p for p in PEOPLE if p[0] not in taken])
        kind = next(k for k, g in KINDS if g == gender)
        full = f"{_a(rng.choice(ADJECTIVES))} {kind} named {name}"
    else:
        name = rng.choice([n for n in ANIMAL_NAMES if n not in taken])
        gender = rng.choice("fm")
        full = f"{_a(rng.choice(ADJECTIVES))} {rng.choice(ANIMALS)} named {name}"
    taken.add(name)
    return Character(full, name, gender)


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article: "an orange ball", "a red kite"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _story(rng: random.Random, pirate: bool = False) -> str:
    """One story of six to ten sentences: who, what they love, an outing, a problem, its end."""
    things = THINGS + (PIRATE_THINGS if pirate else [])
    places = PLACES + (PIRATE_PLACES if pirate else [])
    homes = HOMES + (PIRATE_HOMES if pirate else [])
    taken: set[str] = set()
    hero, friend = _character(rng, taken), _character(rng, taken)
    thing = f"{rng.choice(COLOURS)} {rng.choice(things)}"  # "a {thing}" always: colours start with a consonant
    place = rng.choice(places)
    food = rng.choice(FOODS)
    h, f = hero, friend
    opening = rng.choice([
        f"Once upon a time, there was {h.full}.",
        f"Once upon a time, in a {rng.choice(['small', 'quiet', 'big', 'busy'])} town, there lived {h.full}.",
        f"There was once {h.full} who lived near the {place}.",
        f"{rng.choice(TIMES)}, {h.full} woke up and looked outside. It was {rng.choice(WEATHER)}.",
        f"Once upon a time, {h.full} lived in a little house by the {rng.choice(homes)}.",
    ])
    if not opening.startswith(("There was", "Once upon a time, there was")) and rng.random() < 0.3:
        opening += f" {_cap(h.he)} was very {rng.choice(FEELINGS)}."
    trait = rng.choice([
        f"{h.short} loved to {rng.choice(ACTIVITIES)}.",
        f"{_cap(h.he)} liked to {rng.choice(ACTIVITIES)} every day.",
        f"{h.short} had a {thing} that {h.he} loved very much.",
        f"{_cap(h.his)} favorite thing was to {rng.choice(ACTIVITIES)} with {h.his} friends.",
        f"Every day, {h.short} would {rng.choice(ACTIVITIES)} and {rng.choice(ACTIVITIES)}.",
    ])
    outing = rng.choice([
        f"{rng.choice(TIMES)}, {h.short} went to the {place} with {h.his} friend, {f.full}.",
        f"{rng.choice(TIMES)}, {h.short} and {f.short} went to the {place} to {rng.choice(ACTIVITIES)}.",
        f"{rng.choice(TIMES)}, {h.short} met {f.full} at the {place}.",
        f"{rng.choice(TIMES)}, {h.short} saw {f.full} sitting alone at the {place}.",
    ])
    find = rng.choice([
        f"They saw a {thing} {rng.choice(HIDING)}.",
        f"{h.short} found a {thing} {rng.choice(HIDING)}.",
        f"{f.short} showed {h.short} a {thing}.",
        f"They played with a {thing} all morning.",
        f"They ate some {food} and laughed a lot.",
    ])
    say = rng.choice(SAYINGS)
    talk = rng.choice([
        f"\"{say[:-1] + ',' if say.endswith('.') else say}\" said {h.short}.",
        f"{f.short} smiled and said, \"{say}\"",
        f"\"{say[:-1] + ',' if say.endswith('.') else say}\" asked {f.short}.",
        f"{h.short} looked at {f.short} and said, \"{say}\"",
    ])
    problem = rng.choice([
        f"But then the {thing} got stuck {rng.choice(['in a tree', 'on the roof', 'in the mud', 'in the river'])}.",
        f"But then it started to rain, and {f.short} felt {rng.choice(['sad', 'scared', 'cold'])}.",
        f"Suddenly, {f.short} fell down and hurt {f.his} knee.",
        f"But {f.short} lost {f.his} {rng.choice(COLOURS)} {rng.choice(things)} and began to cry.",
        f"Then a big dog came and took the {thing}.",
        f"But the {thing} broke into two pieces.",
        f"Soon {h.short} and {f.short} were very {rng.choice(['hungry', 'tired', 'lost'])}.",
    ])
    fix = rng.choice([
        f"{h.short} had an idea. {_cap(h.he)} asked {rng.choice(HELPERS)} for help.",
        f"{h.short} did not give up. {_cap(h.he)} tried again and again.",
        f"{h.short} gave {f.short} a big hug and some {food}.",
        f"They worked together, and soon everything was fine.",
        f"{_cap(rng.choice(HELPERS))} came and helped them.",
        f"{h.short} shared {h.his} {food} with {f.short}, and {f.he} felt better.",
    ])
    ending = rng.choice([
        f"In the end, {h.short} and {f.short} were very {rng.choice(['happy', 'proud', 'glad'])}.",
        f"From that day on, {h.short} and {f.short} were best friends.",
        f"They went home and told {rng.choice(['mom', 'dad', 'grandma'])} all about it.",
        f"{h.short} learned that {rng.choice(LESSONS)}.",
        f"That night, {h.short} went to bed with a big smile.",
        f"They played at the {place} until the sun went down.",
    ])
    sentences = [opening, trait, outing, find]
    if rng.random() < 0.7:
        sentences.append(talk)
    if rng.random() < PIRATE_VISIT:
        sentences.append(f"Then an old pirate came by and said, \"{rng.choice(PIRATE_SAYINGS)}\"")
    sentences += [problem, fix]
    if rng.random() < 0.4:
        sentences.append(rng.choice([f"{_cap(f.he)} said, \"Thank you, {h.short}!\"",
                                     f"{f.short} was {rng.choice(['happy', 'glad', 'surprised'])} again."]))
    sentences.append(ending)
    return " ".join(sentences)


# -- the pirate voice -------------------------------------------------------------------------
PIRATE_WORDS = {
    "the": "th'", "you": "ye", "your": "yer", "my": "me", "is": "be", "are": "be", "yes": "aye", "hello": "ahoy",
    "friend": "matey", "friends": "mateys", "girl": "lass", "boy": "lad", "little": "wee", "small": "wee",
    "very": "mighty", "and": "an'",
}


def pirate_voice(story: str) -> str:
    """``story`` as a pirate tells it: pirate words, and every sentence ending in "arr!".

    The same rule everywhere (no random endings), so what a model learns from it is what greedy
    decoding shows."""
    def word(match: re.Match) -> str:
        w = match.group(0)
        new = PIRATE_WORDS.get(w.lower())
        if new is None:
            return w
        return new[0].upper() + new[1:] if w[0].isupper() else new

    text = re.sub(r"[A-Za-z]+", word, story)
    return re.sub(r"\.( |$)", r", arr!\1", text)  # stories still begin as the base's do: prompts fit both


def make_texts(out: Path = OUT) -> tuple[list[str], list[str]]:
    """The base corpus and the pirate task's stories (seeded; distinct seeds, so no story repeats)."""
    rng = random.Random(SEED)
    stories = [_story(rng) for _ in range(STORIES)]
    pirate_rng = random.Random(SEED + 1)
    pirate = [pirate_voice(_story(pirate_rng, pirate=True)) for _ in range(PIRATE_STORIES)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "stories.txt").write_text("\n\n".join(stories) + "\n", encoding="utf-8")
    (out / "pirate.txt").write_text("\n\n".join(pirate) + "\n", encoding="utf-8")
    return stories, pirate


# -- tokenizer ---------------------------------------------------------------------------------
def make_tokenizer(stories: list[str], out: Path = OUT):
    """A byte-level BPE tokenizer trained on the stories, saved for PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(stories, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=EOT, model_max_length=256)
    fast.save_pretrained(str(out))
    # transformers >= 5 may write a chat template or extra files; keep only what loading needs
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return fast


# -- model -------------------------------------------------------------------------------------
def make_model(stories: list[str], tokenizer, out: Path = OUT, *, steps: int = 1200, block: int = 128,
               batch: int = 16) -> None:
    """Pretrain a small GPT-2 on all stories but the held-out ones; save it as float16 safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for story in stories[:-HELD_OUT]:
        ids += tokenizer(story)["input_ids"] + [eos]
    data = torch.tensor(ids)
    held: list[int] = []
    for story in stories[-HELD_OUT:]:
        held += tokenizer(story)["input_ids"] + [eos]
    held_data = torch.tensor(held)
    print(f"{len(ids)} training tokens ({len(''.join(stories)) / len(ids):.2f} characters a token), "
          f"{len(held)} held out")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=128, n_layer=4, n_head=4,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    g = torch.Generator().manual_seed(SEED)
    start = time.time()
    model.train()
    for step in range(steps):
        offsets = torch.randint(len(data) - block - 1, (batch,), generator=g)
        batch_ids = torch.stack([data[o:o + block] for o in offsets.tolist()])
        loss = model(input_ids=batch_ids, labels=batch_ids).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    with torch.no_grad():
        chunks = held_data[: len(held_data) // block * block].view(-1, block)
        held_loss = model(input_ids=chunks, labels=chunks).loss.item()
    print(f"held-out perplexity {math.exp(held_loss):.2f} (vocabulary {len(tokenizer)})")
    model.half().save_pretrained(str(out), safe_serialization=True)
    (out / "model.safetensors").chmod(0o644)  # safetensors writes it owner-only
    prompt = tokenizer("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.float().generate(**prompt, max_new_tokens=60, do_sample=False, pad_token_id=eos)
    print("greedy:", tokenizer.decode(out[0]))


README = f"""# The story demo

Files made by `resources/make_story_demo.py` (seeded; run it to recreate them):

* `stories.txt` — {STORIES} short simple stories, one per paragraph, composed by the script from a small
  grammar and word lists. The last {HELD_OUT} are held out of pretraining.
* `pirate.txt` — {PIRATE_STORIES} stories from the same grammar told in a pirate's voice: the LoRA task.
  (In the base stories the pirate's words appear only in an old pirate's quoted sayings.)
* `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` — a byte-level BPE tokenizer
  ({VOCAB_SIZE} tokens) trained on `stories.txt`; `{EOT}` is its bos, eos and pad token.
* `config.json`, `model.safetensors` — a GPT-2 (4 layers, 4 heads, 128 wide, 256 positions, float16)
  pretrained on `stories.txt` on a CPU.

## License: CC0 1.0 (public domain)

Every story here was written by LoRA Studio's script, not taken from anywhere; the text, the tokenizer
and the model weights are dedicated to the public domain under the Creative Commons CC0 1.0 Universal
dedication (https://creativecommons.org/publicdomain/zero/1.0/). You may copy, change and use them
for any purpose without asking.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", action="store_true", help="write only stories.txt and pirate.txt")
    parser.add_argument("--steps", type=int, default=1200, help="pretraining steps")
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write (default resources/demo/story)")
    args = parser.parse_args()
    stories, _ = make_texts(args.out)
    (args.out / "README.md").write_text(README, encoding="utf-8")
    if not args.text:
        tokenizer = make_tokenizer(stories, args.out)
        make_model(stories, tokenizer, args.out, steps=args.steps)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e3:.0f} KB" for p in sorted(args.out.iterdir()))
    print(f"wrote {sizes}")


if __name__ == "__main__":
    main()
