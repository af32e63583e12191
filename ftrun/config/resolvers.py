"""The interpolations the schema's defaults resolve through: a run's name and its directory.

``name`` defaults to ``${ftrun_run_name:}`` (stage, method, data, lr and rank) and the
run directory to ``${ftrun_run_dir:...}``: a new timestamped folder, or the run that
``resume`` picks up. Every rank of a distributed launch picks the same one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import DictConfig

from ftrun.config.resume import find_resumable_run


def format_lr(lr: float) -> str:
    """``1e-4`` -> ``"1e-4"``, ``3.5e-4`` -> ``"3.5e-4"``, ``0.1`` -> ``"1e-1"``."""
    if not math.isfinite(lr):
        return str(lr)  # nan, inf: validate names it; the run name must not fail first
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(*, _root_: DictConfig) -> str:
    """The default run name: ``[stage-]method-data-lr<lr>[-r<rank>]``, e.g. ``lora-letters-lr1e-3-r16``."""
    method = _root_.method.name
    parts = [method, _root_.data.name, f"lr{format_lr(float(_root_.optimizer.lr))}"]
    if _root_.stage.name != "sft":
        parts.insert(0, _root_.stage.name)
    if method in ("lora", "qlora"):
        parts.append(f"r{_root_.method.rank}")
    return "-".join(str(p) for p in parts)


def run_dir(root: str, name: str, resume: str) -> str:
    """Run directory: ``<root>/<name>/<timestamp>``, or the run being resumed."""
    if resume in ("auto", "force"):
        found = find_resumable_run(Path(root) / name)
        if found is not None:
            return str(found)
    elif resume not in ("never", "", None) and Path(resume).exists():
        path = Path(resume)
        return str(path.parent if path.name.startswith("checkpoint-") else path)
    return str(Path(root) / name / _start_time().strftime("%Y-%m-%d_%H-%M-%S"))


def _start_time():
    """Now; under torchrun/accelerate, the launcher's start, so that every rank picks the same run dir."""
    from datetime import datetime

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import psutil

        return datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    return datetime.now()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch."""
    return int(os.environ.get("RANK", "0")) == 0
