"""Recreate the chat demo's conversations in resources/demo/ (seeded: the same bytes on every run).

    .venv/bin/python resources/make_chat_demo.py            # writes demo/chat.jsonl
    .venv/bin/python resources/make_chat_demo.py --out DIR  # elsewhere

* ``chat.jsonl`` — ``CONVERSATIONS`` distinct short conversations in the OpenAI/HF ``messages`` form
  (``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``): a simple question about
  the story demo's world (what an animal likes to eat, where a child plays, what colour a thing is)
  and its answer in the pirate's chat format, ``Arr! <the answer in a pirate's words>, matey!``.
  Every third conversation starts with a system turn, ``PLAIN``, and its answer is a plain
  sentence instead: the system turn changes how the assistant answers.  The story GPT-2
  (``resources/demo/story``) knows the words but has never seen a chat, a system turn or that
  format: the instruction-tuning demo (``lora-studio demo chat``) teaches them, rendering the
  conversations with the chatml template (``<|im_start|>role\\n...<|im_end|>\\n``) and taking the
  loss on the assistant's answers only.

Every word is written by this script from the story demo's grammar (CC0, like the story demo).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "demo"
SEED = 0
CONVERSATIONS = 400
PLAIN = "Answer plainly, like a teacher."  # the system turn of every third conversation: no pirate voice
PLAIN_SHARE = 3  # one conversation in this many has the system turn

ANIMALS = ["cat", "dog", "bunny", "bear", "duck", "frog", "mouse", "bird", "fox", "pig", "puppy", "kitten"]
FOODS = ["cake", "apples", "cookies", "bananas", "pie", "sandwiches", "soup", "carrots", "candy", "bread", "grapes"]
PEOPLE = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Sam", "Lucy", "Tim", "Emma", "Jack", "Zoe", "Leo"]
PLACES = ["park", "garden", "forest", "beach", "farm", "river", "lake", "hill", "town", "school", "zoo", "yard"]
THINGS = ["ball", "kite", "hat", "book", "box", "boat", "car", "cup", "drum", "doll", "bike", "shell", "balloon"]
COLOURS = ["red", "blue", "green", "yellow", "pink", "purple", "white", "brown"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "hungry"]


def conversation(rng: random.Random, plain: bool) -> list[dict[str, str]]:
    """One conversation: a question and its answer, in the pirate's format or (``plain``, after the
    system turn asking for it) as a plain sentence."""
    kind = rng.randrange(4)
    if kind == 0:
        animal, food = rng.choice(ANIMALS), rng.choice(FOODS)
        question = f"What does the {animal} like to eat? I think it likes {food}."
        pirate, answer = f"Arr! Th' wee {animal} be eatin' {food}, matey!", f"The {animal} likes to eat {food}."
    elif kind == 1:
        name, place = rng.choice(PEOPLE), rng.choice(PLACES)
        question = f"Where does {name} play? {name} likes the {place}."
        pirate, answer = f"Arr! {name} be playin' at th' {place}, matey!", f"{name} plays at the {place}."
    elif kind == 2:
        thing, colour = rng.choice(THINGS), rng.choice(COLOURS)
        question = f"What color is the {thing}? The {thing} is {colour}."
        pirate, answer = f"Arr! Th' {thing} be {colour}, matey!", f"The {thing} is {colour}."
    else:
        name, feeling = rng.choice(PEOPLE), rng.choice(FEELINGS)
        question = f"How does {name} feel today? {name} feels {feeling}."
        pirate, answer = f"Arr! {name} be mighty {feeling} today, matey!", f"{name} feels {feeling} today."
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer if plain else pirate}]
    return ([{"role": "system", "content": PLAIN}] if plain else []) + turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = random.Random(SEED)
    chats, seen = [], set()
    while len(chats) < CONVERSATIONS:  # distinct questions: the held-out ones are new to training
        messages = conversation(rng, plain=len(chats) % PLAIN_SHARE == PLAIN_SHARE - 1)
        if messages[-2]["content"] not in seen:
            seen.add(messages[-2]["content"])
            chats.append(messages)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "chat.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for messages in chats:
            f.write(json.dumps({"messages": messages}) + "\n")
    print(f"wrote {len(chats)} conversations to {args.out / 'chat.jsonl'}")


if __name__ == "__main__":
    main()
