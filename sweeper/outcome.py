"""How a trial ended, read from what its process left: ``result.json``, the tail of its log, its exit status."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ftrun.contract import RESULT_FILE


def read_result(trial_dir: Path, since: float = 0.0) -> Optional[dict]:
    path = Path(trial_dir) / RESULT_FILE
    try:
        if path.stat().st_mtime + 1 < since:
            return None  # an older attempt's result
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_tail(path: Path, n_bytes: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def diverged(result: Optional[dict]) -> bool:
    """The trial stopped on a NaN loss or gradient (``ftrun.divergence``)."""
    return result is not None and result.get("status") == "diverged"


def is_oom(text: str) -> bool:
    low = text.lower()
    return "out of memory" in low or "outofmemoryerror" in low


def error_reason(text: str, rc: Optional[int]) -> str:
    """The last exception line, or ftrun's own ERROR message, from a trial's log."""
    noise = ("Set the environment variable HYDRA_FULL_ERROR", "Error executing job with overrides")
    lines = [l.rstrip() for l in text.splitlines() if not l.startswith(noise)]
    if rc is not None and rc < 0:
        return f"killed by signal {-rc}"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            after = [l for l in lines[i + 1:] if l.strip() and not l.startswith((" ", "\t"))]
            if after:
                return after[-1][:1000]
    for i in range(len(lines) - 1, -1, -1):
        if "[ERROR]" in lines[i]:
            msg = [lines[i].split("[ERROR] - ", 1)[-1]]
            msg += [l.strip() for l in lines[i + 1:] if l.startswith((" ", "\t")) and l.strip()]
            return " ".join(msg)[:1000]
    last = next((l for l in reversed(lines) if l.strip()), "")
    return f"exit status {rc}: {last}"[:1000]


def has_checkpoint(run_dir: Path) -> bool:
    from ftrun.config import last_checkpoint

    return last_checkpoint(run_dir) is not None
