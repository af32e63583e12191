"""The built-in task (``data=letters``) as every kind of example, generated from :mod:`ftrun.letters`.

Train and eval rows come from two seeds (``data.num_train`` / ``data.num_eval``).
sft gets the conversations; pt the rows as plain text; rm, dpo, kto and ppo
preference pairs whose chosen answer is the right one and whose rejected answer
is another instruction's answer in capitals (kto splits each pair into a good
and a bad answer, ppo keeps the prompts).
"""

from __future__ import annotations

import random
from typing import List

from ftrun.config import ConfigError


def letters_pairs(n: int, seed: int) -> List[dict]:
    """The letters task as preference pairs with an obvious pattern: chosen is the right
    answer, rejected the answer to another instruction written in capitals.

    The capitals make the preference learnable in a few steps by the tiny model
    (which cannot yet tell the Chinese instructions apart), so tests and the
    README chains can show the stage metrics move.
    """
    from ftrun import letters

    rng = random.Random(seed + 1000)
    pairs = []
    for row in letters.letters(n, seed):
        words = row["input"].split()
        wrong = {" ".join(f(words)).upper() for f in letters.OPERATIONS.values()} - {row["output"]}
        pairs.append({"prompt": [{"role": "user", "content": row["instruction"] + "\n" + row["input"]}],
                      "chosen": row["output"], "rejected": rng.choice(sorted(wrong))})
    return pairs


def letters_text(n: int, seed: int) -> List[dict]:
    """The letters task as plain-text documents (instruction, input and answer on three lines)."""
    from ftrun import letters

    return [{"text": f"{r['instruction']}\n{r['input']}\n{r['output']}"} for r in letters.letters(n, seed)]


def letters_conversations(n: int, seed: int) -> List[dict]:
    from ftrun import letters
    from ftrun.data.formats import ALPACA_COLUMNS, alpaca_messages

    cols = {k: k for k in ALPACA_COLUMNS}
    return [{"messages": alpaca_messages(r, cols)[0], "tools": ""} for r in letters.letters(n, seed)]


VARIANTS = {"supervised": letters_conversations, "pairwise": letters_pairs, "text": letters_text}


def builtin_examples(data_cfg, kind: str):
    """(train, eval or None) datasets of the built-in task in ``kind``'s normal form."""
    from datasets import Dataset, Features

    from ftrun import letters
    from ftrun.data.kinds import FEATURES

    if data_cfg.builtin not in letters.BUILTIN:
        raise ConfigError(f"data.builtin={data_cfg.builtin}: choose one of {', '.join(letters.BUILTIN)}, "
                          "or give a file with data.path")
    make = VARIANTS[kind]
    out = []
    for n, seed in ((data_cfg.num_train, letters.TRAIN_SEED), (data_cfg.num_eval, letters.EVAL_SEED)):
        rows = make(n, seed) if n else []
        out.append(Dataset.from_list(rows, features=Features(FEATURES[kind])) if rows else None)
    return out[0], out[1]
