"""Data: read Alpaca rows, render them with the chat template, tokenize and mask.

A sample is rendered as a conversation: optional ``system``, the ``history``
pairs, then the user turn (``instruction`` + newline + ``input``) and the
assistant turn (``output``). Only the last assistant turn is trained on unless
``train_on_prompt`` is set; the prompt is the chat template's rendering up to and
including the generation prompt, so the mask boundary is exact.

Everything here runs before the model is loaded, so bad data fails fast.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ftrun.config import ConfigError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips (PyTorch's cross_entropy default)


# ---------------------------------------------------------------------------
# reading


def read_alpaca(path: str) -> List[dict]:
    """Rows of an Alpaca JSON list or JSONL file, checked record by record.

    Raises :class:`ConfigError` naming the file and the line (JSONL) or record
    index (JSON) of the first bad record.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path={path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    rows: List[Tuple[str, Any]] = []
    if p.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
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
    out = [_check_alpaca(path, where, r) for where, r in rows]
    if not out:
        raise ConfigError(f"data.path={path}: the file holds no records")
    return out


def _check_alpaca(path: str, where: str, row: Any) -> dict:
    if not isinstance(row, dict):
        raise ConfigError(f"data.path={path}: {where} is not an object with instruction/input/output")
    for key in ("instruction", "output"):
        if key not in row:
            have = ", ".join(sorted(row)) or "none"
            raise ConfigError(f"data.path={path}: {where} has no '{key}' column (columns: {have})")
    if not isinstance(row["output"], str) or not row["output"].strip():
        raise ConfigError(f"data.path={path}: {where} has an empty or non-string 'output'")
    if not isinstance(row["instruction"], str):
        raise ConfigError(f"data.path={path}: {where} has a non-string 'instruction'")
    history = row.get("history") or []
    if not (isinstance(history, list) and all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history)):
        raise ConfigError(f"data.path={path}: {where}: 'history' must be a list of [user, assistant] pairs")
    return {
        "instruction": row["instruction"],
        "input": row.get("input") or "",
        "output": row["output"],
        "system": row.get("system") or "",
        "history": [list(h) for h in history],
    }


def load_rows(data_cfg) -> Tuple[List[dict], List[dict]]:
    """Train and eval rows for ``data_cfg`` (built-in task or Alpaca file)."""
    from ftrun import tasks

    if data_cfg.path is None:
        make = tasks.BUILTIN.get(data_cfg.builtin)
        if make is None:
            raise ConfigError(f"data.builtin={data_cfg.builtin}: choose one of {', '.join(tasks.BUILTIN)}")
        train = make(data_cfg.num_train, tasks.TRAIN_SEED)
        evals = make(data_cfg.num_eval, tasks.EVAL_SEED)
    else:
        rows = read_alpaca(data_cfg.path)
        train, evals = split(rows, data_cfg.val_size)
    if data_cfg.max_samples is not None:
        train = train[: data_cfg.max_samples]
    return train, evals


def split(rows: List[dict], val_size: float) -> Tuple[List[dict], List[dict]]:
    """Hold out the last ``val_size`` share (<1) or count (>=1) of rows for evaluation."""
    n_eval = int(round(len(rows) * val_size)) if val_size < 1 else int(val_size)
    if val_size > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= len(rows):
        raise ConfigError(f"data.val_size={val_size}: leaves no training rows out of {len(rows)}")
    return (rows[: len(rows) - n_eval], rows[len(rows) - n_eval:]) if n_eval else (rows, [])


# ---------------------------------------------------------------------------
# rendering and tokenizing


def to_messages(row: dict) -> List[Dict[str, str]]:
    """Alpaca row -> chat messages, the last one the assistant's answer."""
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    for user, assistant in row.get("history") or []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    user = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    return messages


@dataclass
class EncodeReport:
    """What tokenizing did to the data: how many samples were cut, and by how much."""

    samples: int = 0
    truncated: int = 0
    tokens_dropped: int = 0
    shortest_prompt: Optional[int] = None

    def as_metrics(self, prefix: str) -> Dict[str, float]:
        return {
            f"{prefix}_samples": self.samples,
            f"{prefix}_truncated": self.truncated,
            f"{prefix}_tokens_dropped": self.tokens_dropped,
        }


def encode(row: dict, tokenizer, cutoff_len: int, train_on_prompt: bool = False) -> Tuple[dict, int, int]:
    """Tokenize one row: (features, prompt length, tokens dropped by truncation).

    The prompt and the answer are tokenized separately, so no BPE merge crosses
    the boundary and the label mask starts exactly at the answer's first token.
    """
    messages = to_messages(row)
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt, dropped = len(prompt_ids), 0
    total = len(prompt_ids) + len(answer_ids)
    if total > cutoff_len:
        # keep at least half the budget for the answer; cut the prompt from the left
        # (the generation prompt at its end must stay) and the answer from the right
        keep_answer = min(len(answer_ids), max(cutoff_len - len(prompt_ids), cutoff_len // 2))
        keep_prompt = cutoff_len - keep_answer
        dropped = total - cutoff_len
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        answer_ids = answer_ids[:keep_answer]
    input_ids = prompt_ids + answer_ids
    labels = list(input_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}, n_prompt, dropped


def encode_rows(rows: Sequence[dict], tokenizer, cutoff_len: int, train_on_prompt: bool = False):
    """A ``datasets.Dataset`` of tokenized rows, and the truncation report."""
    from datasets import Dataset

    report = EncodeReport()
    features = []
    for row in rows:
        feat, n_prompt, dropped = encode(row, tokenizer, cutoff_len, train_on_prompt)
        features.append(feat)
        report.samples += 1
        report.truncated += dropped > 0
        report.tokens_dropped += dropped
        report.shortest_prompt = n_prompt if report.shortest_prompt is None else min(report.shortest_prompt, n_prompt)
    return Dataset.from_list(features), report


def build_datasets(data_cfg, tokenizer):
    """Tokenized train and eval datasets; errors before any model is loaded."""
    train_rows, eval_rows = load_rows(data_cfg)
    train, report = encode_rows(train_rows, tokenizer, data_cfg.cutoff_len, data_cfg.train_on_prompt)
    if report.shortest_prompt is not None and report.shortest_prompt >= data_cfg.cutoff_len:
        raise ConfigError(
            f"cutoff_len={data_cfg.cutoff_len}: shorter than every prompt (the shortest has "
            f"{report.shortest_prompt} tokens), so no answer would be seen; raise cutoff_len"
        )
    evals = None
    if eval_rows:
        evals, _ = encode_rows(eval_rows, tokenizer, data_cfg.cutoff_len, data_cfg.train_on_prompt)
    if report.truncated:
        log.warning("cutoff_len=%d truncated %d of %d training samples (%d tokens dropped)",
                    data_cfg.cutoff_len, report.truncated, report.samples, report.tokens_dropped)
    return train, evals, report
