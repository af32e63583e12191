"""Helpers for sweeper tests (imported by the test modules): a fake trial command for the scheduling logic, and real sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import pytest

from conftest import ROOT, compose_cfg

FAKE = [sys.executable, str(Path(__file__).resolve().parent / "fake_trial.py")]


def fake_sweep(tmp_path: Path, arguments: Sequence[str], fixed: Sequence[str] = ("tracking.enabled=false",),
               **conf):
    """run_sweep in-process with the fake trial command; returns (SweepResult, study)."""
    import optuna

    from sweeper.study import open_storage
    from sweeper.sweep import run_sweep

    conf = {"command": FAKE, "study_name": "test", "heartbeat_s": 0.5, **conf}
    job_cfg = compose_cfg(list(fixed))
    result = run_sweep(conf, [*arguments, *fixed], job_cfg, tmp_path / "sweeps")
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(result.storage))
    return result, study


def ftrun_multirun(args: Sequence[str], env: Dict[str, str] = None, timeout: int = 600, **kw):
    """``python -m ftrun -m <args>`` as a user runs it (from the repository root)."""
    return subprocess.run([sys.executable, "-m", "ftrun", "-m", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture()
def fake_env(monkeypatch):
    """Environment knobs of fake_trial.py, cleared after the test."""
    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))
    return set_


__all__ = ["FAKE", "fake_env", "fake_sweep", "ftrun_multirun"]
