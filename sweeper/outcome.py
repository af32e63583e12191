"""How a trial ended, read from what its process left: ``result.json``, the tail of its log, its exit status.

:func:`classify` is the one rule from those to the trial's state, used for a trial that ends
under its sweeper (:meth:`sweeper.sweep.Sweep._finish`) and for one recorded after its sweeper
died (:func:`sweeper.stale_trials.recover`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ftrun.contract import ATTR_FAIL_REASON, ATTR_PRUNED, RESULT_FILE


@dataclass
class Outcome:
    """A trial's end as the study records it."""

    state: str
    """COMPLETE, PRUNED or FAIL (an ``optuna.trial.TrialState`` name)."""
    values: Optional[List[float]] = None
    """The objectives' values (COMPLETE only)."""
    reason: Optional[str] = None
    """Why it failed or was pruned, when the trial itself did not say."""
    pruned: bool = False
    """result.json says the pruner stopped it."""
    diverged: bool = False
    """It stopped on a NaN loss or gradient."""

    def attrs(self) -> Dict[str, Any]:
        """The user attributes that record this outcome on the trial."""
        out: Dict[str, Any] = {}
        if self.reason:
            out[ATTR_FAIL_REASON] = self.reason[:1000]
        if self.pruned:
            out[ATTR_PRUNED] = True
        if self.diverged:
            out["diverged"] = True
        return out


def classify(result: Optional[dict], objectives: Sequence[str], multi: bool, rc: Optional[int] = 0,
             tail: str = "") -> Outcome:
    """The trial's outcome from its ``result.json`` (None: none of this attempt), its exit status
    (``rc``; 0 for a trial found finished after its sweeper died) and the tail of its log."""
    if result is not None and not isinstance(result, dict):
        return Outcome("FAIL", reason=f"result.json holds a {type(result).__name__}, not a mapping")
    if diverged(result):  # NaN loss or gradient: a result of the sampled point, not a broken setup
        # PRUNED counts toward n_trials and tells the sampler to look elsewhere (multi-objective: FAIL)
        return Outcome("FAIL" if multi else "PRUNED", reason=f"diverged: {result.get('reason')}",
                       pruned=bool(result.get("pruned")), diverged=True)
    if rc != 0 or result is None:
        return Outcome("FAIL", reason="finished without result.json" if rc == 0 else error_reason(tail, rc))
    pruned = bool(result.get("pruned"))
    if pruned and not multi:
        return Outcome("PRUNED", pruned=True)
    try:
        values = [float(result[o]) for o in objectives]
    except (KeyError, TypeError, ValueError):
        return Outcome("FAIL", reason=f"result.json has no {' / '.join(objectives)} (keys: {', '.join(result)})",
                       pruned=pruned)
    if not all(math.isfinite(v) for v in values):
        return Outcome("FAIL", reason=f"objective is not finite: {values}", pruned=pruned)
    return Outcome("COMPLETE", values=values, pruned=pruned)


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
