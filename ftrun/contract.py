"""The names that ftrun's processes share: files in a run directory, environment
variables, MLflow tags and Optuna user attributes.

A run writes these and the sweeper, the analysis commands, export, predict and the
benchmarks read them (or the other way round); every one of them imports the name
from here rather than spelling it. Nothing here imports anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

# ---------------------------------------------------------------------------
# files in a run (or trial) directory

RESULT_FILE = "result.json"
"""The run's outcome: objective_name, objective, eval metrics, train_time_s, pruned, ... (written last)."""
RUN_ID_FILE = "mlflow_run_id"
"""The run's MLflow run id; a resumed run continues that MLflow run."""
RESOLVED_CONFIG = "config_resolved.yaml"
"""The run's whole resolved config (also with tracking off): export, predict, chat and resume read it."""
HYDRA_CONFIG = ".hydra/config.yaml"
"""Hydra's copy of the composed config, read when an old run has no RESOLVED_CONFIG."""
MODEL_DIR = "model"
"""The saved adapter or weights and the tokenizer."""
TRAINER_STATE = "trainer_state.json"
"""transformers' trainer state (log history) of the finished run."""
LOSS_PLOT = "loss.png"
"""Train and eval loss against step."""
TRIAL_LOG = "trial.log"
PROGRESS_LINE = r"\bstep (?P<step>\d+)/(?P<total>-?\d+) \(\d+%\) · epoch (?P<epoch>[\d.]+)"
"""The start of a run's progress line (:mod:`ftrun.progress`), as the board reads it from the run's output."""
"""A sweep trial's stdout and stderr, in its trial directory."""
PARENT_ID_FILE = "mlflow_parent_run_id"
"""A sweep's MLflow parent run id, in the sweep directory."""

# ---------------------------------------------------------------------------
# environment variables

CACHE_ENV = "FTRUN_CACHE"
"""Where the tiny model and tokenized datasets are cached (default ~/.cache/ftrun)."""
MLFLOW_PARENT_RUN_ENV = "FTRUN_MLFLOW_PARENT_RUN_ID"
"""Set by the sweeper: each trial's MLflow run becomes a child of this run."""
OPTUNA_STORAGE_ENV = "FTRUN_OPTUNA_STORAGE"
"""Set by the sweeper: the study's storage URL."""
OPTUNA_STUDY_ENV = "FTRUN_OPTUNA_STUDY"
"""Set by the sweeper: the study's name."""
OPTUNA_TRIAL_ID_ENV = "FTRUN_OPTUNA_TRIAL_ID"
"""Set by the sweeper: the trial's storage id."""
OPTUNA_TRIAL_NUMBER_ENV = "FTRUN_OPTUNA_TRIAL"
"""Set by the sweeper: the trial's number in its study."""
OPTUNA_PRUNER_ENV = "FTRUN_OPTUNA_PRUNER"
"""Set by the sweeper: JSON of hydra.sweeper.pruner; unset means no pruning."""
OPTUNA_OBJECTIVE_ENV = "FTRUN_OPTUNA_OBJECTIVE"
"""Set by the sweeper: the metric the trial reports (default: the run's objective)."""
RUNG_BRANCH_ENV = "FTRUN_RUNG_BRANCH"
"""Set by the sweeper from hydra.sweeper.rung_branch: the share of the steps so far that a rung's decay branch
trains (sweeper.rung_branch); unset means the rung reports the stable-phase evaluation."""
COMPOSE_ERRORS_ENV = "FTRUN_COMPOSE_ERRORS"
"""Set by ftrun.compose with HYDRA_FULL_ERROR: marks it as set by ftrun, not the user (trials inherit both)."""
MEASURING_BASELINE_ENV = "FTRUN_MEASURING_BASELINE"
"""Set in the run that measures the process baseline: its own estimate needs no baseline."""
MALLOC_ENV = "FTRUN_MALLOC"
"""The C allocator a run preloads (ftrun.allocator): jemalloc (default), tcmalloc or system; children inherit it."""
UNUSED_LIBRARIES_ENV = "FTRUN_UNUSED_LIBRARIES"
"""The optional libraries a run keeps out of its process (ftrun.unused_libraries), comma-separated; empty: none.
Unset: those its config does not need; the sweeper sets it for its warm workers."""
ACCELERATE_DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"
"""accelerate's own variable: ``accelerate launch --use_deepspeed`` sets it in every process it starts."""
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
"""MLflow's own variable: the tracking URI when tracking.uri is null."""

# ---------------------------------------------------------------------------
# MLflow tags

TAG_PARENT = "mlflow.parentRunId"
"""MLflow's own tag: a trial's run is a child of the sweep's run."""
TAG_RUN_NAME = "mlflow.runName"
"""MLflow's own tag: the run's name."""
TAG_RUN_DIR = "run_dir"
"""The run directory (absolute); an MLflow run id names a run through it."""
TAG_OVERRIDES = "overrides"
"""The command-line overrides, space-joined."""
TAG_METHOD, TAG_MODEL, TAG_STAGE, TAG_DATA = "method", "model", "stage", "data"
"""The run's method, model, stage and data names."""
TAG_GIT_COMMIT = "git_commit"
"""The commit of the ftrun that ran."""
TAG_PRUNED = "pruned"
"""``true`` on a trial the sweep's pruner stopped."""
TAG_PRUNED_AT_STEP = "pruned_at_step"
"""The step at which it was pruned."""
TAG_PAUSED_AT_STEP = "paused_at_step"
"""The training step at which a trial paused at a rung (hydra.sweeper.pruner=promotion); also in result.json."""
TAG_PROMOTIONS = "promotions"
"""How many times a paused trial was promoted and resumed (hydra.sweeper.pruner=promotion)."""
TAG_FAIL_REASON = "fail_reason"
"""Why a trial failed (also an Optuna user attribute)."""
TAG_OOM_RETRY = "oom_retry"
"""``true`` on a trial rerun with half the batch after running out of memory."""
TAG_RETRY_OF = "retry_of"
"""The trial number a retried trial replaces."""
TAG_SWEEP = "ftrun.sweep"
"""``true`` on a sweep's parent run."""
TAG_STUDY_NAME = "study_name"
"""The Optuna study of a sweep's parent run."""
TAG_STORAGE = "storage"
"""The Optuna storage URL of a sweep's parent run."""
TAG_OBJECTIVES = "objectives"
"""Comma-joined objective names of a sweep's parent run."""
TAG_TRIAL = "optuna.trial"
"""The trial number on a trial's run."""

# ---------------------------------------------------------------------------
# Optuna user attributes (set by the sweeper, read by the analysis commands)

ATTR_OVERRIDES = "overrides"
"""A trial's override list, as launched."""
ATTR_TRIAL_DIR = "trial_dir"
"""A trial's directory."""
ATTR_MLFLOW_RUN_ID = "mlflow_run_id"
"""A trial's MLflow run id."""
ATTR_MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"
"""A study's MLflow parent run id."""
ATTR_OBJECTIVES = TAG_OBJECTIVES
"""A study's objective names."""
ATTR_FAIL_REASON = TAG_FAIL_REASON
ATTR_SURPLUS = "surplus"
"""On a trial asked for but never run: other sweepers of a shared study had already started the last of n_trials."""
ATTR_OOM_RETRY = TAG_OOM_RETRY
ATTR_PRUNED = TAG_PRUNED
ATTR_PAUSED_AT = "paused_at"
"""On a paused trial: the examples seen (the reported step) of the rung it waits at; None once promoted."""
ATTR_PAUSED_AT_STEP = TAG_PAUSED_AT_STEP
ATTR_PROMOTIONS = TAG_PROMOTIONS
ATTR_PACKED_WITH = "packed_with"
"""On a trial trained in a pack (hydra.sweeper.pack): the numbers of the trials in the pack when it started (itself
included; the worker's account once it ends); its duration_s is its share of the pack's wall time, each second split
among the trials training then."""
ATTR_BRANCH_STEPS = "branch_steps"
"""Optimizer steps a trial spent in rung decay branches (hydra.sweeper.rung_branch); also in result.json."""
ATTR_BRANCH_S = "branch_s"
"""Seconds a trial spent in rung decay branches (training and evaluating them); also in result.json."""


def cache_root() -> Path:
    """``$FTRUN_CACHE``, else ``~/.cache/ftrun``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ftrun"))
