"""Data files: which files a path names, their digest, and loading one with the ``datasets`` library.

JSON list, JSONL, CSV, Parquet, Arrow and ``.txt`` files are read one at a time, so
that every problem names its file; a malformed JSON file is diagnosed down to its
first bad line or record, and :class:`Locator` turns a row index back into the
line (or record) a message points at.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
from pathlib import Path
from typing import List, Optional

from ftrun.config import ConfigError

FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow",
              ".txt": "text"}


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
            raise ConfigError(f"{what}={path}: {f.name} is not a data file; use .json, .jsonl, .csv, .parquet, .arrow "
                              "or .txt (raw text)")
    return files


def file_digest(path: Path) -> str:
    """sha256 of the file; text files are also checked to be UTF-8 on the way."""
    h = hashlib.sha256()
    text = path.suffix.lower() in (".json", ".jsonl", ".csv", ".txt")
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
        file_digest(path)  # not UTF-8 text: say the line and byte (diagnose_json would fail to decode it)
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
        if suffix == ".txt":
            return f"line {index + 1}"  # every line is a row, blank ones too
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
