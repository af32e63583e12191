"""The kinds of example a dataset holds, and which stages take each.

==============  ===============================================  ===========================  ==============
kind            a row in the normal form                         recognised by                stages
==============  ===============================================  ===========================  ==============
``supervised``  ``messages`` (role/content turns), ``tools``     output / conversations       sft, ppo
``pairwise``    ``prompt`` (turns), ``chosen``, ``rejected``     ``ranking: true``, chosen/   rm, dpo, kto,
                                                                 rejected columns             ppo
``kto``         ``prompt``, ``completion``, ``label`` (bool)     a ``kto_tag`` (or boolean    kto
                                                                 ``label``) column
``text``        ``text``                                         a .txt file, or only a text  pt
                                                                 column (``columns.prompt``)
==============  ===============================================  ===========================  ==============

kto also takes pairs (each gives a good and a bad answer) and ppo takes the
prompts of supervised or pairwise rows. :func:`ftrun.data.check_stage_data` runs before
anything loads and refuses a dataset whose kind the stage cannot train on,
naming the dataset, its kind and the stages that take it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ftrun.config import ConfigError

KIND_NAMES = {
    "supervised": "supervised conversations",
    "pairwise": "preference pairs",
    "kto": "KTO-labelled answers",
    "text": "raw text",
}
STAGE_KINDS = {
    "pt": ("text",),
    "sft": ("supervised",),
    "rm": ("pairwise",),
    "dpo": ("pairwise",),
    "kto": ("kto", "pairwise"),
    "ppo": ("supervised", "pairwise"),
}
# the form a stage trains on (what each kind it takes is turned into)
STAGE_FORM = {"pt": "text", "sft": "supervised", "rm": "pairwise", "dpo": "pairwise", "kto": "kto", "ppo": "prompt"}


def _features():
    from datasets import List as DList, Value

    turns = DList({"role": Value("string"), "content": Value("string")})
    return {
        "supervised": {"messages": turns, "tools": Value("string")},
        "pairwise": {"prompt": turns, "chosen": Value("string"), "rejected": Value("string")},
        "kto": {"prompt": turns, "completion": Value("string"), "label": Value("bool")},
        "text": {"text": Value("string")},
        "prompt": {"prompt": turns},
    }


class _Features(dict):
    """``FEATURES[kind]``: the ``datasets`` features of a kind's normal form (built on first use)."""

    def __missing__(self, kind):
        self.update(_features())
        return dict.__getitem__(self, kind)


FEATURES: Dict[str, dict] = _Features()
EMPTY = {"supervised": {"messages": [], "tools": ""}, "pairwise": {"prompt": [], "chosen": "", "rejected": ""},
         "kto": {"prompt": [], "completion": "", "label": False}, "text": {"text": ""}}


def empty_row(kind: str) -> dict:
    return dict(EMPTY[kind])


def stages_taking(kind: str) -> List[str]:
    return [stage for stage, kinds in STAGE_KINDS.items() if kind in kinds]


def detect_kind(source, file: Path, columns: Dict[str, str], available: List[str]) -> str:
    """supervised, pairwise, kto or text, from the entry (``ranking``, mapped columns) and the file's columns."""
    have = set(available)
    if file.suffix.lower() == ".txt":
        return "text"
    if source.ranking or "chosen" in columns or "rejected" in columns or {"chosen", "rejected"} <= have:
        return "pairwise"
    conversation = {"conversations", "messages", "output"} & have or {"messages", "output"} & set(columns)
    if "kto_tag" in columns or "kto_tag" in have or ("label" in have and conversation):
        return "kto"
    if "instruction" in columns and not {"output", "messages"} & set(columns) and not conversation:
        return "text"  # LLaMA-Factory's pre-training entries: columns: {prompt: text}
    if not columns and "text" in have and not ({"instruction"} | conversation) & have:
        return "text"
    return "supervised"


def check_kind(stage: str, name: str, kind: str, origin: str = "") -> None:
    """Refuse data of ``kind`` for ``stage``, naming the dataset, its kind and the stages that take it."""
    if kind in STAGE_KINDS[stage]:
        return
    takes = stages_taking(kind)
    wanted = " or ".join(KIND_NAMES[k] for k in STAGE_KINDS[stage])
    raise ConfigError(f"{origin or 'dataset ' + repr(name)} holds {KIND_NAMES[kind]} ({kind}), "
                      f"which stage={' or stage='.join(takes)} trains on; stage={stage} needs {wanted}: "
                      f"set stage={takes[0]}, or give data that fits stage={stage}")
