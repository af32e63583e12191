"""Where a run resumes: the newest run directory under a name, and its last complete checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ftrun.contract import RESULT_FILE, TRAINER_STATE


def find_resumable_run(name_dir: Path) -> Optional[Path]:
    """The newest run directory under ``name_dir`` that holds a complete checkpoint, or the newest
    one if it never finished (killed before its first checkpoint: it starts again in the same
    directory and the same MLflow run rather than leaving an orphan beside a new one)."""
    if not name_dir.is_dir():
        return None
    runs = sorted((d for d in name_dir.iterdir() if d.is_dir()), reverse=True)
    if runs and not (runs[0] / RESULT_FILE).exists() and last_checkpoint(runs[0]) is None:
        return runs[0]
    for run in runs:
        if last_checkpoint(run) is not None:
            return run
    return None


def last_checkpoint(run_dir: Path) -> Optional[Path]:
    """Newest ``checkpoint-N`` in ``run_dir`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it
    was cut off mid-save (e.g. by SIGKILL) and is skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    ckpts = []
    for d in run_dir.glob("checkpoint-*"):
        step = d.name.split("-", 1)[1]
        if step.isdigit() and (d / TRAINER_STATE).is_file():
            ckpts.append((int(step), d))
    return max(ckpts)[1] if ckpts else None
