"""Finished tiny runs for the export / predict / chat tests, trained once per test session.

``finished_run(tmp_path_factory, "lora")`` trains ``compose_cfg([...], fast=True)``
in-process the first time it is asked for a kind and returns the same run
directory afterwards, whichever test module asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from conftest import compose_cfg

KINDS = {
    "lora": [],
    "dora": ["method.use_dora=true"],
    "qlora": ["method=qlora"],
}

_done: Dict[str, Tuple[Path, str]] = {}


def finished_run(tmp_path_factory, kind: str = "lora") -> Tuple[Path, str]:
    """(run directory, its MLflow tracking URI) of a FAST run of ``kind``."""
    if kind not in _done:
        from ftrun.train import run

        tmp = tmp_path_factory.mktemp(f"run-{kind}")
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        cfg = compose_cfg([*KINDS[kind], f"tracking.uri={uri}"], fast=True)
        run(cfg, tmp / "run")
        _done[kind] = (tmp / "run", uri)
    return _done[kind]
