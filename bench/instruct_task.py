"""A second benchmark task, unlike the built-in letters: open-ended instructions on numbers, lists and words.

    python bench/instruct_task.py DIR        # writes DIR/corpus.txt and DIR/instruct.json (same bytes every time)

The tiny base model knows none of this. ``corpus.txt`` (one document per line) states the skills in plain
English prose ("The sum of 23 and 45 is 68.", "Sorted, 9 4 7 reads 4 7 9."), so a ``stage=pt`` run on it gives a
base with the skills; ``instruct.json`` (Alpaca format) asks for them with other wordings, several per skill,
and with free-form answers (short descriptions drawn from templates) beside the exact ones, so fine-tuning has
to map many instructions onto the pre-trained skills and also fit answers with real entropy. Compared with
letters (five fixed instructions, exact answers) capacity (rank) and the learning rate meet a task with more
to learn and a loss floor above zero.

Both files come from fixed seeds with :mod:`random` only, so the benchmark rebuilds them identically.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

WORDS = ["cat", "dog", "sun", "tree", "book", "milk", "road", "fish", "lamp", "rain", "ship", "bird", "cake",
         "door", "hill", "moon", "rock", "snow", "wind", "star"]
COLORS = ["red", "blue", "green", "white", "black", "small", "old", "quiet"]
PLACES = ["near the river", "in the garden", "on the hill", "by the door", "under the tree", "at home"]
VERBS = ["sleeps", "waits", "shines", "moves", "rests", "stays"]


def _nums(rng: random.Random, lo: int = 3, hi: int = 6) -> List[int]:
    return [rng.randint(0, 99) for _ in range(rng.randint(lo, hi))]


def _words(rng: random.Random, lo: int = 2, hi: int = 4) -> List[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def _j(xs) -> str:
    return " ".join(map(str, xs))


# Each skill: (draw the input, the prose the corpus states, the instructions sft asks with, the answer).
Skill = Tuple[Callable[[random.Random], object], Callable[[object, str], str], List[str], Callable[[object], str]]


SKILLS: Dict[str, Skill] = {
    "add": (lambda r: (r.randint(0, 99), r.randint(0, 99)),
            lambda x, a: f"The sum of {x[0]} and {x[1]} is {a}.",
            ["Add these numbers", "What is the total", "Compute the sum", "Plus them together"],
            lambda x: str(x[0] + x[1])),
    "sub": (lambda r: tuple(sorted((r.randint(0, 99), r.randint(0, 99)), reverse=True)),
            lambda x, a: f"{x[0]} minus {x[1]} leaves {a}.",
            ["Subtract the second from the first", "What is the difference", "Take the second away"],
            lambda x: str(x[0] - x[1])),
    "sort": (_nums,
             lambda x, a: f"Sorted, {_j(x)} reads {a}.",
             ["Sort these numbers", "Put them in increasing order", "Order from small to large"],
             lambda x: _j(sorted(x))),
    "max": (_nums,
            lambda x, a: f"The largest of {_j(x)} is {a}.",
            ["Which number is the biggest", "Give the maximum", "Find the largest value"],
            lambda x: str(max(x))),
    "len": (_nums,
            lambda x, a: f"The list {_j(x)} holds {a} numbers.",
            ["How many numbers are there", "Count the items", "Give the length of the list"],
            lambda x: str(len(x))),
    "rev": (_words,
            lambda x, a: f"Backwards, {_j(x)} becomes {a}.",
            ["Reverse the word order", "Say the words backwards", "Flip the order of the words"],
            lambda x: _j(reversed(x))),
    "upper": (_words,
              lambda x, a: f"In capitals, {_j(x)} is written {a}.",
              ["Write these in upper case", "Capitalize every letter", "Make it uppercase"],
              lambda x: _j(x).upper()),
    "plural": (_words,
               lambda x, a: f"One {_j(x)}, many {a}.",
               ["Make each word plural", "Give the plurals", "Turn them into plurals"],
               lambda x: _j(w + "s" for w in x)),
}


def _story(rng: random.Random) -> Tuple[str, str]:
    """A free-form request and one of many acceptable answers (the answer's wording is random)."""
    thing, color, place, verb = rng.choice(WORDS), rng.choice(COLORS), rng.choice(PLACES), rng.choice(VERBS)
    answer = rng.choice([f"The {color} {thing} {verb} {place}.", f"A {color} {thing} {verb} {place}.",
                         f"{place.capitalize()}, the {color} {thing} {verb}.",
                         f"There is a {color} {thing} {place}; it {verb}."])
    return rng.choice([f"Describe a {thing}", f"Write a sentence about a {thing}", f"Tell me about a {thing}"]), answer


def corpus(n: int, seed: int = 11) -> List[str]:
    """Plain-text documents: a few skill statements and a description per line."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        parts = []
        for _ in range(3):
            draw, prose, _, answer = SKILLS[rng.choice(sorted(SKILLS))]
            x = draw(rng)
            parts.append(prose(x, answer(x)))
        parts.append(_story(rng)[1])
        docs.append(" ".join(parts))
    return docs


def instructions(n: int, seed: int = 12, story_share: float = 0.2) -> List[dict]:
    """Alpaca rows: a skill asked with one of its instructions, or a free-form description."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < story_share:
            ask, answer = _story(rng)
            rows.append({"instruction": ask, "input": "", "output": answer})
            continue
        draw, _, asks, answer = SKILLS[rng.choice(sorted(SKILLS))]
        x = draw(rng)
        rows.append({"instruction": rng.choice(asks), "input": _j(x), "output": answer(x)})
    return rows


def build(out: Path, n_corpus: int = 4000, n_instruct: int = 814) -> Dict[str, Path]:
    """Write (or keep, when already there with the same bytes) corpus.txt and instruct.json under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"corpus": (out / "corpus.txt", "\n".join(corpus(n_corpus)) + "\n"),
             "instruct": (out / "instruct.json", json.dumps(instructions(n_instruct), indent=0) + "\n")}
    for path, text in files.values():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return {k: p for k, (p, _) in files.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/instruct_task.py OUT_DIR")
    for name, path in build(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
