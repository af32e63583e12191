"""A real small sweep for the analysis tests: ``python -m ftrun -m ...`` as a user runs it.

The study and the MLflow store are what the sweeper writes: an Optuna study in sqlite whose
trials are tiny ftrun runs in their own processes, each a child of the sweep's parent run.
Five enqueued trials, one at a time, in order: two complete start-up trials, one with a
learning rate far too low that the median pruner stops at its first evaluation, one that
fails (rank=0, refused before its model loads), and one more complete trial.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

STUDY = "lora_search"
EXPERIMENT = "analysis-test"
STEPS = ["data.num_train=64", "data.num_eval=32", "max_steps=12", "batch_size=8",
         "train.logging_steps=2", "train.eval_steps=3", "train.save_steps=0"]
ENQUEUED = [
    {"lr": 3e-3, "rank": 8, "alpha": 16},
    {"lr": 6e-3, "rank": 8, "alpha": 16},    # with trial 0, a median (~3.4 at step 3) far below trial 2's (~3.72)
    {"lr": 1.2e-4, "rank": 4, "alpha": 8},   # far too low: pruned at its first evaluation
    {"lr": 2e-3, "rank": 0, "alpha": 16},    # fails: rank must be >= 1
    {"lr": 8e-3, "rank": 8, "alpha": 16},
]
FAIL_TRIAL = 3


@dataclass
class Sweep:
    root: Path
    tracking_uri: str
    storage: str
    study_name: str
    parent_run_id: str
    run_ids: Dict[int, str]  # trial number -> MLflow run id
    overrides: Dict[int, List[str]]


def build(root: Path, compose_cfg=None) -> Sweep:
    """Run the sweep into ``root``; MLflow goes to ``root/mlflow.db``."""
    import optuna
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    enqueue = ",".join("{" + ",".join(f"{k}:{v}" for k, v in t.items()) + "}" for t in ENQUEUED)
    root_dir = Path(__file__).resolve().parents[2]
    out = subprocess.run([
        sys.executable, "-m", "ftrun", "-m", *STEPS, "lr=tag(log,interval(1e-4,1e-2))", "rank=choice(0,4,8)",
        "alpha=choice(8,16)", f"tracking.experiment={EXPERIMENT}", f"output_root={root / 'outputs'}",
        f"hydra.sweep.dir={root / 'sweeps'}", f"hydra.sweeper.study_name={STUDY}", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner={name:median,n_startup_trials:2,n_warmup_steps:0}", f"hydra.sweeper.enqueue=[{enqueue}]",
    ], cwd=root_dir, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (db,) = (root / "sweeps").glob("*/study.db")
    storage = f"sqlite:///{db}"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("ftrun.sweep") == "true"]
    children = {int(r.data.tags["optuna.trial"]): r for r in runs if "optuna.trial" in r.data.tags}
    run_ids = {t.number: children[t.number].info.run_id for t in study.trials}
    overrides = {n: r.data.tags.get("overrides", "").split() for n, r in children.items()}
    return Sweep(root, uri, storage, STUDY, parent.info.run_id, run_ids, overrides)
