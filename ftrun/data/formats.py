"""Dataset layouts: turning every record of a dataset's files into the normal form of its kind.

Files are loaded by :mod:`ftrun.data.files` (JSON list, JSONL, CSV, Parquet,
Arrow, .txt, or a folder of them), one file at a time so that every problem
names its file. What kind of example a file holds (supervised, pairwise, kto or
raw text; :mod:`ftrun.data.kinds`) follows from its dataset entry (``ranking``,
the ``columns`` it maps) and its columns. Layouts:

* ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system``,
  ``history`` (earlier ``[user, assistant]`` pairs) and ``tools``; preference
  pairs have ``chosen``/``rejected`` strings instead of ``output``; KTO rows a
  boolean ``kto_tag`` beside ``output``.
* ``sharegpt``: a list of turns under ``conversations`` with ``from``/``value``
  and role tags ``human``/``gpt``/``system`` (``function_call``/``observation``
  with a ``tools`` column); the OpenAI ``messages`` form (``role``/``content``)
  is recognised from its keys. Pairs end with a user turn and give ``chosen``/
  ``rejected`` as one turn or a string. Tags and columns can be renamed.
* raw text: a ``.txt`` file (one document per line, as LLaMA-Factory reads it)
  or a text column (``text``, or the one ``columns.prompt`` names).

A record that cannot be used (an empty answer, turns that do not alternate, ...)
is *skipped* and counted, with its file and line or record index, unless
``strict`` is set; then it is an error. File-level problems (malformed JSON,
undecodable bytes, a missing column) are always errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ftrun.config import ConfigError
from ftrun.data.files import Locator, load_file

log = logging.getLogger(__name__)

FORMATS = ("auto", "alpaca", "sharegpt")

# canonical column -> default file column; LLaMA-Factory's names are accepted as aliases
ALPACA_COLUMNS = {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
                  "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
COLUMN_ALIASES = {"prompt": "instruction", "query": "input", "response": "output", "conversations": "messages"}
COLUMN_ROLES = (*ALPACA_COLUMNS, "messages", "tools", "chosen", "rejected", "kto_tag")
MEDIA_COLUMNS = {"images": "images", "videos": "videos", "audios": "audio"}
EMPTY_TEXT = "\0empty"  # a blank raw-text line: dropped without counting as a skipped record
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system", "observation_tag": "observation", "function_tag": "function_call"}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "system_tag": "system", "observation_tag": "tool", "function_tag": "function"}
TAG_KEYS = tuple(SHAREGPT_TAGS)
MAX_LISTED_SKIPS = 5


@dataclass
class Source:
    """One dataset to read: its files and how to read them."""

    name: str
    files: List[Path]
    format: str = "auto"
    columns: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    max_samples: Optional[int] = None
    """Use the first N rows (data.sources' max_samples)."""
    num_samples: Optional[int] = None
    """LLaMA-Factory's num_samples: a seeded sample of N rows, repeating rows when the data has fewer."""
    ranking: bool = False
    """LLaMA-Factory's ``ranking: true``: the rows are preference pairs."""
    kind: Optional[str] = None
    """supervised, pairwise, kto or text; set when the first file is read."""
    origin: str = ""
    """How the user named it, for messages: ``data.path=x.jsonl`` or ``dataset_info.json entry 'a'``."""

    def key(self) -> dict:
        return {"name": self.name, "format": self.format, "columns": dict(sorted(self.columns.items())),
                "tags": dict(sorted(self.tags.items())), "max_samples": self.max_samples,
                "num_samples": self.num_samples, "ranking": self.ranking}


@dataclass
class Skip:
    """A record left out, and why."""

    file: str
    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where} {self.why}"


# ---------------------------------------------------------------------------
# columns, formats and kinds


def canonical_columns(source: Source, origin: str) -> Dict[str, str]:
    """The source's column mapping with LLaMA-Factory's names made canonical (prompt -> instruction, ...)."""
    columns = {}
    for key, col in (source.columns or {}).items():
        canonical = COLUMN_ALIASES.get(key, key)
        if canonical in MEDIA_COLUMNS:
            raise ConfigError(f"{origin}: column '{key}' holds {MEDIA_COLUMNS[canonical]}; multimodal data is not "
                              "supported (ftrun trains text-only models): drop the column from the entry")
        if canonical not in COLUMN_ROLES:
            raise ConfigError(f"{origin}: unknown column role '{key}'; use prompt (instruction), query (input), "
                              "response (output), system, history, messages (conversations), tools, chosen, "
                              "rejected or kto_tag")
        columns[canonical] = col
    return columns


def resolve_columns(source: Source, file: Path, available: List[str]) -> Tuple[str, str, Dict[str, str], Dict[str, str]]:
    """(kind, format, canonical -> file column, tags) for one file, checked against its columns."""
    from ftrun.data.kinds import detect_kind

    where = f"data.path={file}"
    origin = source.origin or where
    columns = canonical_columns(source, origin)
    fmt = source.format
    if fmt not in FORMATS:
        raise ConfigError(f"{origin}: format '{fmt}' is unknown; choose alpaca, sharegpt or auto")
    kind = detect_kind(source, file, columns, available)
    if kind == "text":
        col = columns.get("instruction", "text")
        if col not in available:
            raise ConfigError(f"{where}: has no '{col}' column for raw text (columns: {', '.join(available) or 'none'}); "
                              "name the text column with the dataset's columns, e.g. data.columns={prompt: body}")
        return kind, "text", {"text": col}, {}
    if fmt == "auto":
        conv = "messages" in columns or (any(c in available for c in ("conversations", "messages"))
                                         and not any(k in columns for k in ("instruction", "output"))
                                         and not any(c in available for c in ("instruction", "output")))
        fmt = "sharegpt" if conv else "alpaca"
    optional = {"system": "system", "tools": "tools"}
    if fmt == "alpaca":
        mapping = {**ALPACA_COLUMNS, **optional}
        required = {"supervised": ("instruction", "output"), "pairwise": ("instruction", "chosen", "rejected"),
                    "kto": ("instruction", "output", "kto_tag")}[kind]
    else:
        default_messages = "conversations" if "conversations" in available or "messages" not in available else "messages"
        mapping = {"messages": default_messages, **optional}
        required = {"supervised": ("messages",), "pairwise": ("messages", "chosen", "rejected"),
                    "kto": ("messages", "kto_tag")}[kind]
    if kind == "pairwise":
        mapping.update(chosen="chosen", rejected="rejected")
    if kind == "kto":
        mapping["kto_tag"] = "kto_tag" if "kto_tag" in available else "label"
    mapping.update(columns)
    for key in required:
        if mapping[key] not in available:
            have = ", ".join(available) or "none"
            renamed = f" (mapped from {key})" if mapping[key] != key else ""
            turns = next((c for c in ("conversations", "messages") if c in available), None)
            fix = (f"its '{turns}' column is a ShareGPT/messages layout: set data.format=sharegpt (or auto)"
                   if fmt == "alpaca" and turns else "rename it with the dataset's columns mapping")
            raise ConfigError(f"{where}: has no '{mapping[key]}' column{renamed} (columns: {have}); {fix}")
    if kind != "supervised" and "tools" in columns:
        raise ConfigError(f"{origin}: a tools column in {kind} data; tool calls train with stage=sft only: "
                          "drop the tools column from the entry")
    mapping = {k: v for k, v in mapping.items() if v in available}
    if kind != "supervised":
        mapping.pop("tools", None)
    tags = {}
    for key, value in (source.tags or {}).items():
        if key not in TAG_KEYS:
            raise ConfigError(f"{origin}: unknown tag '{key}'; use {', '.join(TAG_KEYS)}")
        tags[key] = value
    return kind, fmt, mapping, tags


def _json_cell(value: Any) -> Any:
    """A list stored as JSON text (CSV cells) -> the list; anything else unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(value: Any) -> Optional[str]:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from an empty CSV cell
        return ""
    return value if isinstance(value, str) else None


def alpaca_prompt(row: dict, cols: Dict[str, str]) -> Tuple[Optional[list], str]:
    """(messages up to and including the user's turn, "") for an Alpaca row, or (None, why it is skipped)."""
    instruction = _text(row.get(cols["instruction"]))
    inp = _text(row.get(cols["input"])) if "input" in cols else ""
    system = _text(row.get(cols["system"])) if "system" in cols else ""
    if instruction is None:
        return None, f"has a non-string '{cols['instruction']}'"
    if inp is None:
        return None, f"has a non-string '{cols['input']}'"
    if system is None:
        return None, f"has a non-string '{cols['system']}'"
    if not instruction.strip() and not inp.strip():
        return None, f"has an empty prompt (both '{cols['instruction']}' and '{cols.get('input', 'input')}' are empty)"
    messages = [{"role": "system", "content": system}] if system else []
    history = _json_cell(row.get(cols["history"])) if "history" in cols else None
    if isinstance(history, float) and history != history:
        history = None
    if history is not None:
        if not isinstance(history, list):
            return None, f"'{cols['history']}' must be a list of [user, assistant] pairs"
        for turn, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                return None, f"'{cols['history']}' item {turn} is not a [user, assistant] pair of strings"
            if not pair[1].strip():
                return None, f"'{cols['history']}' item {turn} has an empty assistant answer"
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": instruction + ("\n" + inp if inp else "")}], ""


def alpaca_messages(row: dict, cols: Dict[str, str]) -> Tuple[Optional[list], str]:
    """(messages, "") for a good Alpaca row, or (None, why it is skipped)."""
    output = row.get(cols["output"])
    if output is None or (isinstance(output, float) and output != output):
        return None, f"has no '{cols['output']}' (missing or null)"
    if not isinstance(output, str) or not output.strip():
        return None, f"has an empty or non-string '{cols['output']}'"
    messages, why = alpaca_prompt(row, cols)
    if messages is None:
        return None, why
    return messages + [{"role": "assistant", "content": output}], ""


def sharegpt_turns(row: dict, cols: Dict[str, str], tags: Dict[str, str], tools: bool = False,
                   end: str = "assistant") -> Tuple[Optional[list], str]:
    """(messages, "") for a good ShareGPT / OpenAI-messages row, or (None, why it is skipped).

    Turns alternate: user (or, with ``tools``, an observation: a tool's result) then
    assistant (or a function call); the last turn is ``end``'s side.
    """
    turns = _json_cell(row.get(cols["messages"]))
    col = cols["messages"]
    if not isinstance(turns, list) or not turns:
        return None, f"has an empty or non-list '{col}'"
    if tags:
        t = {**SHAREGPT_TAGS, **tags}
    else:
        first = turns[0] if isinstance(turns[0], dict) else {}
        t = OPENAI_TAGS if "role" in first and "from" not in first else SHAREGPT_TAGS
    roles = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system"}
    if tools:
        roles.update({t["function_tag"]: "function_call", t["observation_tag"]: "observation"})
    messages = []
    last_tag = t["system_tag"]
    system = _text(row.get(cols["system"])) if "system" in cols else ""
    if system is None:
        return None, f"has a non-string '{cols['system']}'"
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or t["role_tag"] not in turn or t["content_tag"] not in turn:
            return None, f"'{col}' turn {i} has no '{t['role_tag']}'/'{t['content_tag']}' keys"
        tag, content = turn[t["role_tag"]], turn[t["content_tag"]]
        role = roles.get(tag)
        if role is None:
            if tag in (t["observation_tag"], t["function_tag"]):
                return None, (f"'{col}' turn {i} is a tool turn ('{tag}'); tool calls train with stage=sft "
                              "on data with a tools column")
            return None, (f"'{col}' turn {i} has role '{tag}'; expected {t['user_tag']}, {t['assistant_tag']} "
                          f"or {t['system_tag']} (set the dataset's tags if yours differ)")
        if not isinstance(content, str):
            return None, f"'{col}' turn {i} has non-string content"
        if role == "system":
            if i != 0 or system:
                return None, f"'{col}' turn {i} is a system turn that is not the first turn"
            if content:
                messages.append({"role": "system", "content": content})
            continue
        prompt_side = not messages or messages[-1]["role"] in ("system", "assistant", "function_call")
        if (role in ("user", "observation")) != prompt_side:
            prev = turns[i - 1].get(t["role_tag"]) if i and isinstance(turns[i - 1], dict) else "start"
            return None, (f"'{col}' turn {i} is '{tag}' after '{prev}'; turns must alternate "
                          f"{t['user_tag']}/{t['assistant_tag']} starting with {t['user_tag']}")
        if role == "assistant" and not content.strip():
            return None, f"'{col}' turn {i} has an empty assistant answer"
        if role == "function_call":
            from ftrun.data.tools import parse_calls

            if parse_calls(content) is None:
                return None, (f"'{col}' turn {i} is a function call that is not JSON "
                              '{"name": ..., "arguments": {...}} (or a list of them)')
        messages.append({"role": role, "content": content})
        last_tag = tag
    last = messages[-1]["role"] if messages else "none"
    if end == "assistant" and last not in ("assistant",):
        return None, f"'{col}' ends with a {last_tag} turn, not an {t['assistant_tag']} answer"
    if end == "user" and last != "user":
        return None, f"'{col}' must end with a {t['user_tag']} turn (the answers go in chosen/rejected)"
    return messages, ""


def sharegpt_messages(row: dict, cols: Dict[str, str], tags: Dict[str, str]) -> Tuple[Optional[list], str]:
    """(messages, "") for a good ShareGPT / OpenAI-messages row without tools, or (None, why)."""
    return sharegpt_turns(row, cols, tags)


def _answer(value: Any, key: str, tags: Dict[str, str]) -> Tuple[Optional[str], str]:
    """A chosen/rejected answer: a string, one turn ({from, value} / {role, content}) or a one-turn list."""
    value = _json_cell(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        t = {**SHAREGPT_TAGS, **tags} if tags else (OPENAI_TAGS if "role" in value else SHAREGPT_TAGS)
        value = value.get(t["content_tag"])
    if value is None or (isinstance(value, float) and value != value):
        return None, f"has no '{key}' answer (missing or null); pairwise data needs both 'chosen' and 'rejected'"
    if not isinstance(value, str) or not value.strip():
        return None, f"'{key}' must be a non-empty string or one assistant turn"
    return value, ""


def _label(value: Any, key: str) -> Tuple[Optional[bool], str]:
    if isinstance(value, bool):
        return value, ""
    if isinstance(value, int) and value in (0, 1):
        return bool(value), ""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true", ""
    return None, f"'{key}' must be true or false (good or bad answer), got {value!r:.40}"


def _tools(value: Any, key: str) -> Tuple[Optional[str], str]:
    """The tools column as JSON text ("" when a row has none)."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return "", ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        return None, f"'{key}' is not JSON ({e.msg}); give a JSON list of function definitions"
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not all(isinstance(f, dict) and f.get("name") or
                                               isinstance(f, dict) and isinstance(f.get("function"), dict)
                                               for f in parsed):
        return None, f"'{key}' must be a JSON list of function definitions with a name"
    return json.dumps(parsed, ensure_ascii=False) if parsed else "", ""


def record(row: dict, kind: str, fmt: str, cols: Dict[str, str], tags: Dict[str, str]) -> Tuple[Optional[dict], str]:
    """One file row in the normal form of its kind (see :mod:`ftrun.data.kinds`), or (None, why it is skipped)."""
    if kind == "text":
        text = _text(row.get(cols["text"]))
        if text is None:
            return None, f"'{cols['text']}' is not a string"
        return {"text": text}, ""
    if kind == "supervised":
        tools, why = _tools(row.get(cols["tools"]), cols["tools"]) if "tools" in cols else ("", "")
        if tools is None:
            return None, why
        if fmt == "alpaca":
            msgs, why = alpaca_messages(row, cols)
        else:
            msgs, why = sharegpt_turns(row, cols, tags, tools="tools" in cols)
        return ({"messages": msgs, "tools": tools}, "") if msgs is not None else (None, why)
    if kind == "pairwise":
        answers = {}
        for key in ("chosen", "rejected"):
            answers[key], why = _answer(row.get(cols[key]), cols[key], tags)
            if answers[key] is None:
                return None, why
        if answers["chosen"].strip() == answers["rejected"].strip():
            return None, (f"'{cols['chosen']}' and '{cols['rejected']}' are identical ({answers['chosen'][:60]!r}); "
                          "a pair must prefer one answer over a different one")
        prompt, why = alpaca_prompt(row, cols) if fmt == "alpaca" else sharegpt_turns(row, cols, tags, end="user")
        return ({"prompt": prompt, **answers}, "") if prompt is not None else (None, why)
    # kto: a conversation whose last answer is labelled good (true) or bad (false)
    label, why = _label(row.get(cols["kto_tag"]), cols["kto_tag"])
    if label is None:
        return None, why
    msgs, why = alpaca_messages(row, cols) if fmt == "alpaca" else sharegpt_turns(row, cols, tags)
    if msgs is None:
        return None, why
    return {"prompt": msgs[:-1], "completion": msgs[-1]["content"], "label": label}, ""


# ---------------------------------------------------------------------------
# loading a source


def normalize(ds, kind: str, fmt: str, cols: Dict[str, str], tags: Dict[str, str], num_proc: Optional[int] = None,
              fingerprint: Optional[str] = None):
    """``ds`` -> a dataset in ``kind``'s normal form and ``_skip`` (why a record is unusable, "" if fine)."""
    from datasets import Features, Value

    from ftrun.data.kinds import FEATURES, empty_row

    names = list(FEATURES[kind])

    def fn(batch):
        n = len(next(iter(batch.values())))
        out = {k: [] for k in [*names, "_skip"]}
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            try:
                rec, why = record(row, kind, fmt, cols, tags)
            except Exception as e:  # noqa: BLE001 - an odd record is skipped with its reason, never a crash
                rec, why = None, f"cannot be read ({type(e).__name__}: {e})"
            if rec is not None and kind == "text" and not rec["text"].strip():
                rec, why = None, EMPTY_TEXT  # blank lines separate documents; dropped without a warning
            rec = rec or empty_row(kind)
            for k in names:
                out[k].append(rec[k])
            out["_skip"].append(why)
        return out

    features = Features({**FEATURES[kind], "_skip": Value("string")})
    used = sorted(set(cols.values()))
    ds = ds.select_columns(used)
    return ds.map(fn, batched=True, batch_size=1000, remove_columns=used, features=features,
                  num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 4 * num_proc else None,
                  load_from_cache_file=False, new_fingerprint=fingerprint, desc=None)


def source_kind(source: Source) -> str:
    """The kind of example a source holds, from its entry and its first file's columns (reads that file)."""
    from ftrun.data.kinds import detect_kind

    if source.kind is None:
        file = source.files[0]
        columns = canonical_columns(source, source.origin or f"data.path={file}")
        source.kind = detect_kind(source, file, columns, list(load_file(file).column_names))
    return source.kind


def read_source(source: Source, strict: bool = False, num_proc: Optional[int] = None):
    """A source's files as one dataset in the normal form of its kind, and the records skipped.

    ``source.kind`` is set; every file of a source must hold the same kind.
    """
    from datasets import concatenate_datasets

    parts, skips = [], []
    for file in source.files:
        ds = load_file(file)
        if len(ds) == 0:
            raise ConfigError(f"data.path={file}: the file holds no records")
        kind, fmt, cols, tags = resolve_columns(source, file, list(ds.column_names))
        if source.kind is not None and kind != source.kind:
            raise ConfigError(f"{source.origin or 'data.path=' + str(file)}: {file.name} holds {kind} data, "
                              f"the dataset's other files {source.kind} data; keep one kind per dataset")
        source.kind = kind
        digest = hashlib.sha256(json.dumps([str(file), file.stat().st_mtime_ns, kind, fmt, cols, tags]).encode())
        norm = normalize(ds, kind, fmt, cols, tags, num_proc, fingerprint=digest.hexdigest()[:16])
        reasons = norm.with_format("arrow")["_skip"].to_pylist()
        bad = [i for i, r in enumerate(reasons) if r and r != EMPTY_TEXT]
        if bad:
            locate = Locator(file)
            file_skips = [Skip(str(file), locate(i), reasons[i]) for i in bad]
            if strict:
                raise ConfigError(f"data.path={file}: {file_skips[0].where} {file_skips[0].why} "
                                  f"(data.strict=true; {len(bad)} bad record(s) in this file)")
            skips += file_skips
        if any(reasons):
            norm = norm.select([i for i, r in enumerate(reasons) if not r])
            if len(norm) == 0:
                first = f"; the first: {skips[-len(bad)].where} {skips[-len(bad)].why}" if bad else ""
                raise ConfigError(f"data.path={file}: no usable records: all {len(reasons)} were skipped{first}")
        parts.append(norm.remove_columns("_skip"))
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if source.num_samples is not None:
        ds = sample_rows(ds, source.num_samples)
    if source.max_samples is not None and source.max_samples < len(ds):
        ds = ds.select(range(source.max_samples))
    return ds, skips


def sample_rows(ds, n: int, seed: int = 0):
    """LLaMA-Factory's ``num_samples``: a seeded random sample of ``n`` rows when the data has more,
    every row plus randomly repeated ones when it has fewer."""
    import random

    rng = random.Random(seed)
    order = list(range(len(ds)))
    rng.shuffle(order)
    if n <= len(ds):
        return ds.select(order[:n])
    return ds.select(order + [rng.randrange(len(ds)) for _ in range(n - len(ds))])


def report_skips(skips: List[Skip], total: int) -> None:
    if not skips:
        return
    listed = "; ".join(str(s) for s in skips[:MAX_LISTED_SKIPS])
    more = f"; and {len(skips) - MAX_LISTED_SKIPS} more" if len(skips) > MAX_LISTED_SKIPS else ""
    log.warning("Skipped %d of %d records (data.strict=true makes this an error): %s%s",
                len(skips), total, listed, more)
