"""Built-in generated tasks, so the default run needs no download.

``letters``: an instruction names an operation on a string of letters, the answer
applies it. The tiny base model is pre-trained on the English instructions; the
fine-tuning data uses Chinese ones, so a run has to teach the model which new
instruction means which skill it already has. Evaluation strings are drawn from
another seed, so exact match measures that mapping, not memorised strings.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List

LETTERS = "abcdefghijklmnopqrstuvwxyz"

OPERATIONS: Dict[str, Callable[[List[str]], List[str]]] = {
    "repeat": lambda s: s,
    "reverse": lambda s: s[::-1],
    "first": lambda s: s[:1],
    "last": lambda s: s[-1:],
    "count": lambda s: [str(len(s))],
}

INSTRUCTIONS = {
    "en": {
        "repeat": "Repeat the letters",
        "reverse": "Reverse the letters",
        "first": "Give the first letter",
        "last": "Give the last letter",
        "count": "Count the letters",
    },
    "zh": {
        "repeat": "重复这些字母",
        "reverse": "把字母倒过来",
        "first": "第一个字母是什么",
        "last": "最后一个字母是什么",
        "count": "一共有几个字母",
    },
}


def letters(n: int, seed: int, language: str = "zh", min_len: int = 3, max_len: int = 6) -> List[dict]:
    """``n`` Alpaca rows of the letters task, the same for the same arguments."""
    rng = random.Random(seed)
    words = INSTRUCTIONS[language]
    rows = []
    for _ in range(n):
        op = rng.choice(list(OPERATIONS))
        s = [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
        rows.append({"instruction": words[op], "input": " ".join(s), "output": " ".join(OPERATIONS[op](s))})
    return rows


# seeds: train and eval never share a seed, and the base pre-training uses its own
TRAIN_SEED, EVAL_SEED = 1, 2

BUILTIN = {"letters": letters}
