"""Shared fixtures: compose configs as the CLI does, and a tiny model built once per machine.

The tiny model is cached under $FTRUN_CACHE (default ~/.cache/ftrun), so only the
first test session on a machine pays for building it (about a minute).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pytest
from omegaconf import DictConfig

from ftrun.compose import compose, conf_dir

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = conf_dir()

# settings that make a real run take seconds on 2 CPU cores
FAST = [
    "data.num_train=64",
    "data.num_eval=32",
    "max_steps=6",
    "batch_size=8",
    "train.logging_steps=2",
    "train.eval_steps=3",
    "train.save_steps=0",
]


def compose_cfg(overrides: Sequence[str] = (), fast: bool = False) -> DictConfig:
    """The config that ``ftrun <overrides>`` would run."""
    return compose([*(FAST if fast else []), *overrides])


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from ftrun.tiny import ensure_tiny

    return ensure_tiny(compose_cfg().model.tiny)


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _no_mlflow_in_cwd(monkeypatch, tmp_path):
    # a test that forgets mlflow_uri must not write ./mlflow.db into the repo
    if "MLFLOW_TRACKING_URI" not in os.environ:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow-default.db'}")
