"""Data for the stages besides sft: preference pairs, prompts and raw text.

Pairwise rows (rm, dpo, kto) come in the layouts LLaMA-Factory made common:

- Alpaca: ``instruction`` (or ``prompt``), optional ``input``, ``system`` and
  ``history``, and the two answers ``chosen`` and ``rejected`` (strings);
- ShareGPT: ``conversations`` (``from``/``value`` turns, tags human/gpt/system)
  or OpenAI ``messages`` (``role``/``content``) ending with a user turn, and
  ``chosen``/``rejected`` as a string, one turn, or a one-turn list.

Every layout is read into one normal form, ``{"prompt": [messages],
"chosen": str, "rejected": str}``; :func:`to_trl` turns it into TRL's
conversational preference format, so the tokenizer's chat template renders it.

Raw text (pt) is a ``.txt`` file, documents separated by blank lines, or a
JSON/JSONL file with a text column. Prompts (ppo) are read from either pairwise
or Alpaca SFT rows.

The built-in task (``data=letters``) has a variant for every stage, generated
from :mod:`ftrun.tasks` with the same seeds: the letters rows as plain text for
pt, and pairs whose chosen answer is the correct one and whose rejected answer
is the answer to another instruction for rm, dpo and kto.

Everything here runs before any model is loaded, and a bad record raises
:class:`ConfigError` naming the file and the record.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ftrun.config import ConfigError

ROLE_TAGS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
             "system": "system", "bot": "assistant", "model": "assistant"}


# ---------------------------------------------------------------------------
# files


def read_records(path: str) -> List[Tuple[str, Any]]:
    """``(where, record)`` for each record of a JSON list or JSONL file; ``where`` names it in errors."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path={path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    if p.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"data.path={path}: line {lineno} is not valid JSON ({e.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"data.path={path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        if not isinstance(data, list):
            raise ConfigError(f"data.path={path}: expected a JSON list of records (or a .jsonl file)")
        rows = [(f"record {i}", r) for i, r in enumerate(data)]
    if not rows:
        raise ConfigError(f"data.path={path}: the file holds no records")
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"data.path={path}: {where} is not a JSON object")
    return rows


def read_pairs(path: str) -> List[dict]:
    """Preference pairs from an Alpaca or ShareGPT/messages file, in the normal form."""
    return [parse_pair(row, f"data.path={path}: {where}") for where, row in read_records(path)]


def read_prompts(path: str) -> List[dict]:
    """Prompts (``{"prompt": [messages]}``) from pairwise or Alpaca SFT rows, for ppo."""
    return [{"prompt": parse_prompt(row, f"data.path={path}: {where}")} for where, row in read_records(path)]


def read_texts(path: str, column: str = "text") -> List[str]:
    """Documents of a .txt file (separated by blank lines) or of a JSON/JSONL file's ``column``."""
    p = Path(path).expanduser()
    if p.suffix not in (".json", ".jsonl"):
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"data.path={path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
        docs = [d.strip() for d in text.replace("\r\n", "\n").split("\n\n")]
        docs = [d for d in docs if d]
        if not docs:
            raise ConfigError(f"data.path={path}: the file holds no text")
        return docs
    docs = []
    for where, row in read_records(path):
        if column not in row:
            have = ", ".join(sorted(row)) or "none"
            raise ConfigError(f"data.path={path}: {where} has no '{column}' column (columns: {have}); "
                              f"set stage.text_column to the column that holds the text")
        if not isinstance(row[column], str):
            raise ConfigError(f"data.path={path}: {where}: '{column}' is not a string")
        if row[column].strip():
            docs.append(row[column])
    if not docs:
        raise ConfigError(f"data.path={path}: every '{column}' is empty")
    return docs


# ---------------------------------------------------------------------------
# one record


def parse_prompt(row: dict, where: str) -> List[Dict[str, str]]:
    """The conversation up to the answer, as chat messages ending with the user's turn."""
    if "conversations" in row or "messages" in row:
        key = "conversations" if "conversations" in row else "messages"
        turns = row[key]
        if not isinstance(turns, list) or not turns:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of turns")
        messages = [_turn(t, where, key) for t in turns]
        if row.get("system") and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": row["system"]})
        if messages[-1]["role"] == "assistant" and "chosen" not in row:
            messages = messages[:-1]  # an SFT conversation: the last answer is not part of the prompt
        if not messages or messages[-1]["role"] != "user":
            raise ConfigError(f"{where}: '{key}' must end with a user turn (the answers go in chosen/rejected)")
        return messages
    instruction = row.get("instruction", row.get("prompt"))
    if not isinstance(instruction, str) or not instruction.strip():
        have = ", ".join(sorted(row)) or "none"
        raise ConfigError(f"{where} has no prompt: give 'instruction' (Alpaca), 'prompt', "
                          f"'conversations' or 'messages' (columns: {have})")
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    history = row.get("history") or []
    if not (isinstance(history, list) and all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history)):
        raise ConfigError(f"{where}: 'history' must be a list of [user, assistant] pairs")
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    user = instruction + ("\n" + row["input"] if row.get("input") else "")
    return messages + [{"role": "user", "content": user}]


def parse_pair(row: dict, where: str) -> dict:
    """One preference pair in the normal form; errors name the record and the problem."""
    answers = {}
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            have = ", ".join(sorted(row)) or "none"
            raise ConfigError(f"{where} has no '{key}' answer (columns: {have}); "
                              "pairwise data needs both 'chosen' and 'rejected'")
        answers[key] = _answer(row[key], where, key)
    if answers["chosen"].strip() == answers["rejected"].strip():
        raise ConfigError(f"{where}: 'chosen' and 'rejected' are identical ({answers['chosen'][:60]!r}); "
                          "a pair must prefer one answer over a different one")
    return {"prompt": parse_prompt(row, where), **answers}


def _turn(turn: Any, where: str, key: str) -> Dict[str, str]:
    if not isinstance(turn, dict):
        raise ConfigError(f"{where}: each turn of '{key}' must be an object")
    role = turn.get("from", turn.get("role"))
    content = turn.get("value", turn.get("content"))
    if role not in ROLE_TAGS or not isinstance(content, str):
        raise ConfigError(f"{where}: a turn of '{key}' needs from/value (human, gpt, system) "
                          f"or role/content (user, assistant, system); got {turn!r:.80}")
    return {"role": ROLE_TAGS[role], "content": content}


def _answer(value: Any, where: str, key: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = _turn(value, where, key)["content"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string or one assistant turn")
    return value


# ---------------------------------------------------------------------------
# into TRL's formats


def to_trl(pair: dict) -> dict:
    """Normal form -> TRL's conversational preference row (prompt, chosen, rejected)."""
    return {
        "prompt": pair["prompt"],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def to_unpaired(pairs: List[dict]) -> List[dict]:
    """Pairs -> KTO's rows: each pair gives a desirable and an undesirable completion."""
    rows = []
    for p in pairs:
        for key, label in (("chosen", True), ("rejected", False)):
            rows.append({"prompt": p["prompt"], "completion": [{"role": "assistant", "content": p[key]}],
                         "label": label})
    return rows


# ---------------------------------------------------------------------------
# the built-in task for each stage


def letters_pairs(n: int, seed: int) -> List[dict]:
    """The letters task as preference pairs with an obvious pattern: chosen is the right
    answer, rejected the answer to another instruction written in capitals.

    The capitals make the preference learnable in a few steps by the tiny model
    (which cannot yet tell the Chinese instructions apart), so tests and the
    README chains can show the stage metrics move.
    """
    from ftrun import tasks

    rng = random.Random(seed + 1000)
    pairs = []
    for row in tasks.letters(n, seed):
        letters = row["input"].split()
        wrong = {" ".join(f(letters)).upper() for f in tasks.OPERATIONS.values()} - {row["output"]}
        pairs.append({"prompt": [{"role": "user", "content": row["instruction"] + "\n" + row["input"]}],
                      "chosen": row["output"], "rejected": rng.choice(sorted(wrong))})
    return pairs


def letters_text(n: int, seed: int) -> List[str]:
    """The letters task as plain-text documents (instruction, input and answer on three lines)."""
    from ftrun import tasks

    return [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in tasks.letters(n, seed)]


BUILTIN_PAIRS = {"letters": letters_pairs}
BUILTIN_TEXT = {"letters": letters_text}


# ---------------------------------------------------------------------------
# train / eval rows for a stage


def load_pairs(data_cfg) -> Tuple[List[dict], List[dict]]:
    """Train and eval pairs (built-in or file), in the normal form."""
    if data_cfg.path is None:
        make = _builtin(BUILTIN_PAIRS, data_cfg, "pairwise")
        return _cap(make(data_cfg.num_train, _seeds()[0]), data_cfg), make(data_cfg.num_eval, _seeds()[1])
    return _split(read_pairs(data_cfg.path), data_cfg)


def load_prompts(data_cfg) -> Tuple[List[dict], List[dict]]:
    """Train and eval prompts (built-in or file), as ``{"prompt": [messages]}`` rows."""
    if data_cfg.path is None:
        train, evals = load_pairs(data_cfg)
        return [{"prompt": p["prompt"]} for p in train], [{"prompt": p["prompt"]} for p in evals]
    return _split(read_prompts(data_cfg.path), data_cfg)


def load_texts(data_cfg, column: str = "text") -> Tuple[List[str], List[str]]:
    """Train and eval documents (built-in or file)."""
    if data_cfg.path is None:
        make = _builtin(BUILTIN_TEXT, data_cfg, "raw-text")
        return _cap(make(data_cfg.num_train, _seeds()[0]), data_cfg), make(data_cfg.num_eval, _seeds()[1])
    return _split(read_texts(data_cfg.path, column), data_cfg)


def _seeds():
    from ftrun import tasks

    return tasks.TRAIN_SEED, tasks.EVAL_SEED


def _builtin(table, data_cfg, kind):
    make = table.get(data_cfg.builtin)
    if make is None:
        raise ConfigError(f"data.builtin={data_cfg.builtin}: no {kind} variant; choose one of {', '.join(table)} "
                          "or give a file with data.path")
    return make


def _cap(rows, data_cfg):
    return rows[: data_cfg.max_samples] if data_cfg.max_samples is not None else rows


def _split(rows, data_cfg):
    """Hold out the last ``val_size`` share (<1) or count (>=1) of a file's rows for evaluation."""
    val_size = data_cfg.val_size
    n_eval = int(round(len(rows) * val_size)) if val_size < 1 else int(val_size)
    if val_size > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= len(rows):
        raise ConfigError(f"data.val_size={val_size}: leaves no training rows out of {len(rows)}")
    return _cap(rows[: len(rows) - n_eval], data_cfg), rows[len(rows) - n_eval:]
