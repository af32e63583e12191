"""Reading dataset files and turning every record into a conversation.

Files are loaded with the ``datasets`` library (JSON list, JSONL, CSV, Parquet,
or a folder of them), one file at a time so that every problem names its file.
Each record is normalized into ``messages``: a list of ``{role, content}`` with
roles ``system`` (optional, first), then alternating ``user`` / ``assistant``,
ending with ``assistant``.

Formats:

* ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and
  ``history`` (earlier ``[user, assistant]`` pairs).
* ``sharegpt``: a list of turns under ``conversations`` with ``from``/``value``
  and role tags ``human``/``gpt``/``system``; the OpenAI ``messages`` form
  (``role``/``content``, ``user``/``assistant``/``system``) is recognised from
  its keys. Tags and columns can be renamed.

A record that cannot be used (an empty answer, turns that do not alternate, ...)
is *skipped* and counted, with its file and line or record index, unless
``strict`` is set; then it is an error. File-level problems (malformed JSON,
undecodable bytes, a missing column) are always errors.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ftrun.config import ConfigError

log = logging.getLogger(__name__)

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
FORMATS = ("auto", "alpaca", "sharegpt")

# canonical column -> default file column; LLaMA-Factory's names are accepted as aliases
ALPACA_COLUMNS = {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
                  "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
COLUMN_ALIASES = {"prompt": "instruction", "query": "input", "response": "output", "conversations": "messages"}
UNSUPPORTED_COLUMNS = {
    "images": "images", "videos": "videos", "audios": "audio",
    "chosen": "preference pairs (chosen/rejected)", "rejected": "preference pairs (chosen/rejected)",
    "kto_tag": "KTO labels", "tools": "tool definitions",
}
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
    origin: str = ""
    """How the user named it, for messages: ``data.path=x.jsonl`` or ``dataset_info.json entry 'a'``."""

    def key(self) -> dict:
        return {"name": self.name, "format": self.format, "columns": dict(sorted(self.columns.items())),
                "tags": dict(sorted(self.tags.items())), "max_samples": self.max_samples}


@dataclass
class Skip:
    """A record left out, and why."""

    file: str
    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where} {self.why}"


# ---------------------------------------------------------------------------
# files


def list_files(path: str, what: str = "data.path") -> List[Path]:
    """The data files of ``path``: a file, a folder of data files, or a glob."""
    p = Path(path).expanduser()
    if any(ch in path for ch in "*?["):
        files = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    elif p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in FILE_TYPES
                       and not any(part.startswith(".") for part in q.relative_to(p).parts))
        if not files:
            raise ConfigError(f"{what}={path}: the folder holds no {', '.join(sorted(set(FILE_TYPES)))} files")
    elif p.is_file():
        files = [p]
    else:
        raise ConfigError(f"{what}={path}: no such file or folder")
    if not files:
        raise ConfigError(f"{what}={path}: matches no files")
    for f in files:
        if f.suffix.lower() not in FILE_TYPES:
            raise ConfigError(f"{what}={path}: {f.name} is not a data file; use .json, .jsonl, .csv, .parquet or .arrow")
    return files


def file_digest(path: Path) -> str:
    """sha256 of the file; text files are also checked to be UTF-8 on the way."""
    h = hashlib.sha256()
    text = path.suffix.lower() in (".json", ".jsonl", ".csv")
    decoder = codecs.getincrementaldecoder("utf-8")() if text else None
    offset = lines = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            if decoder is not None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    bad = offset + e.start
                    line = lines + chunk[: e.start].count(b"\n") + 1
                    raise ConfigError(f"data.path={path}: line {line} is not UTF-8 text (byte {bad}); "
                                      "re-save the file as UTF-8") from None
                lines += chunk.count(b"\n")
            offset += len(chunk)
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ConfigError(f"data.path={path}: ends in the middle of a UTF-8 character; re-save it as UTF-8") from None
    return h.hexdigest()


def load_file(path: Path):
    """One file as a ``datasets.Dataset``; a load failure is explained by file and line."""
    import datasets

    kind = FILE_TYPES[path.suffix.lower()]
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        if kind == "arrow":
            return datasets.Dataset.from_file(str(path))
        if path.stat().st_size == 0:
            raise ConfigError(f"data.path={path}: the file is empty")
        if path.suffix.lower() == ".json":
            _refuse_json_object(path)
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - explained below, then re-raised as a ConfigError
        if kind == "json":
            diagnose_json(path)
        cause = e.__cause__ or e
        raise ConfigError(f"data.path={path}: cannot be read as {kind} ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)


def _refuse_json_object(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"{"):
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return  # JSON lines in a .json file: datasets reads those
    if isinstance(data, dict):
        raise ConfigError(f"data.path={path}: expected a JSON list of records (or a .jsonl file), "
                          f"got an object with keys {', '.join(list(data)[:8])}")


def diagnose_json(path: Path) -> None:
    """Raise a :class:`ConfigError` naming the first bad line or record of a JSON/JSONL file."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() == ".jsonl" or not stripped.startswith("["):
        if path.suffix.lower() == ".json" and stripped.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                raise ConfigError(f"data.path={path}: expected a JSON list of records (or a .jsonl file), "
                                  f"got an object with keys {', '.join(list(data)[:8])}")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"data.path={path}: line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"data.path={path}: line {lineno} is not a JSON object")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.path={path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConfigError(f"data.path={path}: record {i} is not a JSON object")


class Locator:
    """Names a record of a file: ``line N`` for JSONL/CSV, ``record i`` otherwise."""

    def __init__(self, path: Path):
        self.path = path
        self._lines: Optional[List[int]] = None

    def __call__(self, index: int) -> str:
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            return f"record {index}"
        if self._lines is None:
            if suffix == ".jsonl":
                with open(self.path, "rb") as f:
                    self._lines = [n for n, line in enumerate(f, 1) if line.strip()]
            else:
                self._lines = []
        if suffix == ".jsonl" and index < len(self._lines):
            return f"line {self._lines[index]}"
        return f"line {index + 2}" if suffix == ".csv" else f"record {index}"  # csv: line 1 is the header


# ---------------------------------------------------------------------------
# columns and formats


def resolve_columns(source: Source, file: Path, available: List[str]) -> Tuple[str, Dict[str, str], Dict[str, str]]:
    """(format, canonical -> file column, tags) for one file, checked against its columns."""
    where = f"data.path={file}"
    columns = {}
    for key, col in (source.columns or {}).items():
        canonical = COLUMN_ALIASES.get(key, key)
        if canonical in UNSUPPORTED_COLUMNS or key in UNSUPPORTED_COLUMNS:
            raise ConfigError(f"{source.origin or where}: column '{key}' ({UNSUPPORTED_COLUMNS.get(canonical, key)}) "
                              "is not supported; ftrun trains text-only supervised fine-tuning")
        if canonical not in ALPACA_COLUMNS and canonical != "messages":
            raise ConfigError(f"{source.origin or where}: unknown column role '{key}'; use instruction (prompt), "
                              "input (query), output (response), system, history or messages (conversations)")
        columns[canonical] = col
    fmt = source.format
    if fmt not in FORMATS:
        raise ConfigError(f"{source.origin or where}: format '{fmt}' is unknown; choose alpaca, sharegpt or auto")
    if fmt == "auto":
        if "messages" in columns:
            fmt = "sharegpt"
        elif any(c in available for c in ("conversations", "messages")) and not any(
                k in columns for k in ("instruction", "output")) and "output" not in available:
            fmt = "sharegpt"
        else:
            fmt = "alpaca"
    if fmt == "alpaca":
        mapping = {**ALPACA_COLUMNS, **columns}
        required = ("instruction", "output")
    else:
        default_messages = "conversations" if "conversations" in available or "messages" not in available else "messages"
        mapping = {"messages": default_messages, "system": "system", **columns}
        required = ("messages",)
    for key in required:
        if mapping[key] not in available:
            have = ", ".join(available) or "none"
            renamed = f" (mapped from {key})" if mapping[key] != key else ""
            raise ConfigError(f"{where}: has no '{mapping[key]}' column{renamed} (columns: {have}); "
                              "rename it with the dataset's columns mapping")
    for bad in UNSUPPORTED_COLUMNS:
        if bad in columns:
            raise ConfigError(f"{where}: column '{bad}' is not supported")
    mapping = {k: v for k, v in mapping.items() if v in available}
    tags = {}
    for key, value in (source.tags or {}).items():
        if key not in TAG_KEYS:
            raise ConfigError(f"{source.origin or where}: unknown tag '{key}'; use {', '.join(TAG_KEYS)}")
        tags[key] = value
    return fmt, mapping, tags


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


def alpaca_messages(row: dict, cols: Dict[str, str]) -> Tuple[Optional[list], str]:
    """(messages, "") for a good Alpaca row, or (None, why it is skipped)."""
    instruction = _text(row.get(cols["instruction"]))
    inp = _text(row.get(cols.get("input", ""), None)) if "input" in cols else ""
    output = row.get(cols["output"])
    system = _text(row.get(cols["system"])) if "system" in cols else ""
    if output is None or (isinstance(output, float) and output != output):
        return None, f"has no '{cols['output']}' (missing or null)"
    if not isinstance(output, str) or not output.strip():
        return None, f"has an empty or non-string '{cols['output']}'"
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
    user = instruction + ("\n" + inp if inp else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return messages, ""


def sharegpt_messages(row: dict, cols: Dict[str, str], tags: Dict[str, str]) -> Tuple[Optional[list], str]:
    """(messages, "") for a good ShareGPT / OpenAI-messages row, or (None, why it is skipped)."""
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
    messages = []
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
                return None, f"'{col}' turn {i} is a tool turn ('{tag}'); tool use is not supported"
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
        expected = "user" if not messages or messages[-1]["role"] in ("system", "assistant") else "assistant"
        if role != expected:
            prev = turns[i - 1].get(t["role_tag"]) if i and isinstance(turns[i - 1], dict) else "start"
            return None, (f"'{col}' turn {i} is '{tag}' after '{prev}'; turns must alternate "
                          f"{t['user_tag']}/{t['assistant_tag']} starting with {t['user_tag']}")
        if role == "assistant" and not content.strip():
            return None, f"'{col}' turn {i} has an empty assistant answer"
        messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "assistant":
        return None, f"'{col}' ends with a {t['user_tag']} turn, not an {t['assistant_tag']} answer"
    return messages, ""


# ---------------------------------------------------------------------------
# loading a source


def normalize(ds, fmt: str, cols: Dict[str, str], tags: Dict[str, str], num_proc: Optional[int] = None,
              fingerprint: Optional[str] = None):
    """``ds`` -> a dataset of ``messages`` and ``_skip`` (why a record is unusable, "" if fine)."""
    from datasets import Features, List as DList, Value

    def fn(batch):
        n = len(next(iter(batch.values())))
        out_m, out_s = [], []
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            try:
                if fmt == "alpaca":
                    msgs, why = alpaca_messages(row, cols)
                else:
                    msgs, why = sharegpt_messages(row, cols, tags)
            except Exception as e:  # noqa: BLE001 - an odd record is skipped with its reason, never a crash
                msgs, why = None, f"cannot be read ({type(e).__name__}: {e})"
            out_m.append(msgs or [])
            out_s.append(why)
        return {"messages": out_m, "_skip": out_s}

    features = Features({"messages": DList({"role": Value("string"), "content": Value("string")}),
                         "_skip": Value("string")})
    used = sorted(set(cols.values()))
    ds = ds.select_columns(used)
    return ds.map(fn, batched=True, batch_size=1000, remove_columns=used, features=features,
                  num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 4 * num_proc else None,
                  load_from_cache_file=False, new_fingerprint=fingerprint, desc=None)


def read_source(source: Source, strict: bool = False, num_proc: Optional[int] = None):
    """A source's files as one dataset of ``messages``, and the records skipped."""
    from datasets import concatenate_datasets

    parts, skips = [], []
    for file in source.files:
        ds = load_file(file)
        if len(ds) == 0:
            raise ConfigError(f"data.path={file}: the file holds no records")
        fmt, cols, tags = resolve_columns(source, file, list(ds.column_names))
        digest = hashlib.sha256(json.dumps([str(file), file.stat().st_mtime_ns, fmt, cols, tags]).encode())
        norm = normalize(ds, fmt, cols, tags, num_proc, fingerprint=digest.hexdigest()[:16])
        reasons = norm.with_format("arrow")["_skip"].to_pylist()
        bad = [i for i, r in enumerate(reasons) if r]
        if bad:
            locate = Locator(file)
            file_skips = [Skip(str(file), locate(i), reasons[i]) for i in bad]
            if strict:
                raise ConfigError(f"data.path={file}: {file_skips[0].where} {file_skips[0].why} "
                                  f"(data.strict=true; {len(bad)} bad record(s) in this file)")
            skips += file_skips
            keep = [i for i, r in enumerate(reasons) if not r]
            norm = norm.select(keep)
            if len(norm) == 0:
                raise ConfigError(f"data.path={file}: no usable records: all {len(bad)} were skipped; "
                                  f"the first: {file_skips[0].where} {file_skips[0].why}")
        parts.append(norm.remove_columns("_skip"))
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if source.max_samples is not None and source.max_samples < len(ds):
        ds = ds.select(range(source.max_samples))
    return ds, skips


def report_skips(skips: List[Skip], total: int) -> None:
    if not skips:
        return
    listed = "; ".join(str(s) for s in skips[:MAX_LISTED_SKIPS])
    more = f"; and {len(skips) - MAX_LISTED_SKIPS} more" if len(skips) > MAX_LISTED_SKIPS else ""
    log.warning("Skipped %d of %d records (data.strict=true makes this an error): %s%s",
                len(skips), total, listed, more)
