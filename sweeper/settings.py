"""The ``hydra.sweeper`` settings of one sweep, read and checked once, before the study opens.

:func:`read_settings` turns the plain ``hydra.sweeper`` mapping (:class:`sweeper.config.FtrunSweeperConf`),
the parsed search space and the composed job config into :class:`Settings`: what the sweep
optimizes, how many trials it wants, where its study lives, its budgets and how trials run.
A setting that cannot be used raises :class:`sweeper.study.SweepConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ftrun.contract import MLFLOW_URI_ENV
from sweeper.space import SearchSpace
from sweeper.study import SweepConfigError, directions, is_grid, pruner_key, require_driver, storage_url

log = logging.getLogger("ftrun.sweeper")


@dataclass
class Settings:
    """One sweep's settings, with the defaults of :class:`sweeper.config.FtrunSweeperConf` applied."""

    conf: Dict[str, Any]
    """The plain ``hydra.sweeper`` mapping (keys read only here or by the module that owns them)."""
    space: SearchSpace
    """The parsed search space (:func:`sweeper.space.sweep_space`)."""
    job_cfg: Any
    """The composed config with the fixed overrides applied."""
    entry_args: List[str]
    """Extra arguments of every trial command (``--config-name`` ...)."""
    objectives: List[str]
    """Metrics of result.json the study optimizes."""
    directions: List[str]
    """minimize / maximize, one per objective."""
    study_name: str
    """The Optuna study (given, or derived from the preset, model, data and a hash of the space)."""
    sweep_dir: Path
    """``<hydra.sweep.dir>/<study_name>``: trial directories, summary, workers' logs."""
    storage_url: str
    """The study's storage URL."""
    shared: bool
    """Whether the storage was named by the user, and so may be shared with sweepers on other hosts."""
    n_trials: int
    """Trials wanted (capped at the number of configurations of a finite space)."""
    max_failures: int
    """Failed trials this run tolerates before it stops starting new ones."""
    pruner_spec: Any
    """The pruner (``none`` for several objectives: Optuna cannot prune them)."""
    command: List[str]
    """A fresh trial's entry point."""
    host: str
    """This host's name, recorded on each trial for stale-trial recovery."""
    experiment: str
    """MLflow experiment of the sweep's parent run."""
    base_values: Dict[str, Any]
    """Values of condition parents that are not searched: fixed overrides or the config's own."""
    budget_trial_s: Optional[float]
    """Trial-second budget of the study (null: none)."""
    budget_wall_s: Optional[float]
    """Wall-clock budget of this run of the sweep (null: none)."""
    heartbeat_s: float
    """How often running trials' heartbeats are recorded."""
    stale_after_s: float
    """A RUNNING trial with no heartbeat for this long was left behind by a dead sweeper."""
    rung_branch: Optional[float] = None
    """Share of its steps so far that a trial trains in a decay branch at each rung (null: no branch)."""

    @property
    def multi(self) -> bool:
        """Several objectives: a Pareto front, no pruning."""
        return len(self.objectives) > 1

    @property
    def grid(self) -> bool:
        """``sampler: grid``: every point of the space is enqueued."""
        return is_grid(self.conf.get("sampler", "tpe"))

    def tracking(self) -> bool:
        """Whether the sweep keeps an MLflow parent run."""
        return bool(self.conf.get("mlflow", True)) and bool(select(self.job_cfg, "tracking.enabled", True))

    def tracking_uri(self) -> Optional[str]:
        """tracking.uri, else MLFLOW_TRACKING_URI (None: MLflow's default)."""
        return select(self.job_cfg, "tracking.uri") or os.environ.get(MLFLOW_URI_ENV)


def read_settings(conf: Mapping[str, Any], space: SearchSpace, job_cfg, sweep_root: Path,
                  entry_args: Sequence[str] = ()) -> Settings:
    """Settings from ``hydra.sweeper`` (``conf``); creates the sweep directory."""
    conf = dict(conf)
    objectives = list(conf.get("objectives") or [job_cfg.objective])
    _check_eval_split(objectives, space, job_cfg)
    study_name = conf.get("study_name") or _derive_name(job_cfg, space, objectives)
    sweep_dir = (Path(sweep_root) / study_name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(conf.get("storage"), sweep_dir)
    require_driver(url)
    n_trials = _n_trials(conf, space)
    pruner = conf.get("pruner", "median")
    if len(objectives) > 1 and pruner_key(pruner) != "none":
        log.warning("%d objectives: Optuna cannot prune multi-objective trials; pruning is off", len(objectives))
        pruner = "none"
    if str(conf.get("workers", "warm")) not in ("warm", "fresh"):
        raise SweepConfigError(f"hydra.sweeper.workers={conf.get('workers')}: choose warm or fresh")
    positive(conf.get("memory_limit_gb"), "memory_limit_gb")  # refused now, not at the first launch
    return Settings(
        conf=conf, space=space, job_cfg=job_cfg, entry_args=list(entry_args), objectives=objectives,
        directions=directions(objectives, conf.get("direction")), study_name=study_name, sweep_dir=sweep_dir,
        storage_url=url,
        # a storage URL given by the user may be shared with sweepers on other hosts (which then
        # draw from their own seeds and look for each other's dead trials throughout)
        shared=conf.get("storage") not in (None, "", "sqlite", "journal"),
        n_trials=n_trials, max_failures=_max_failures(conf, n_trials), pruner_spec=pruner,
        command=list(conf.get("command") or [sys.executable, "-m", "ftrun"]), host=socket.gethostname(),
        experiment=str(select(job_cfg, "tracking.experiment", "ftrun")),
        base_values=_base_values(space, job_cfg),
        budget_trial_s=positive(conf.get("budget_trial_s"), "budget_trial_s"),
        budget_wall_s=positive(conf.get("budget_wall_s"), "budget_wall_s"),
        heartbeat_s=float(conf.get("heartbeat_s", 10.0)), stale_after_s=float(conf.get("stale_after_s", 60.0)),
        rung_branch=None if conf.get("rung_branch") is None else float(conf["rung_branch"]))


def positive(value: Any, key: str) -> Optional[float]:
    """``hydra.sweeper.<key>`` as a float > 0, or None when unset."""
    if value is None:
        return None
    if float(value) <= 0:
        raise SweepConfigError(f"hydra.sweeper.{key}={value}: must be > 0 (or null for no budget)")
    return float(value)


def _n_trials(conf: Mapping[str, Any], space: SearchSpace) -> int:
    n_trials = int(conf.get("n_trials", 20))
    if is_grid(conf.get("sampler", "tpe")) or (space.finite() and space.grid_size() < n_trials):
        size = space.grid_size()  # a finite space (e.g. lr=1e-4,1e-3): no point in more trials than configs
        if n_trials > size:
            log.info("The search space has %d configurations: n_trials %d -> %d", size, n_trials, size)
        n_trials = min(n_trials, size)
    return n_trials


def _max_failures(conf: Mapping[str, Any], n_trials: int) -> int:
    if conf.get("max_failures") is not None:
        return int(conf["max_failures"])
    if conf.get("max_failure_rate") is not None:
        return int(math.floor(float(conf["max_failure_rate"]) * n_trials))
    return max(3, math.ceil(n_trials / 4))


def _derive_name(job_cfg, space: SearchSpace, objectives: Sequence[str]) -> str:
    choices_ = choices(job_cfg)
    prefix = choices_.get("sweep") or choices_.get("method") or "sweep"
    parts = [str(prefix), select(job_cfg, "model.name", "model"), select(job_cfg, "data.name", "data")]
    blob = json.dumps({"space": space.describe(), "fixed": space.fixed, "objectives": list(objectives)},
                      sort_keys=True, default=str)
    return "-".join(str(p) for p in parts if p) + f"-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def _base_values(space: SearchSpace, job_cfg) -> Dict[str, Any]:
    base = {}
    choices_ = choices(job_cfg)
    for cond in space.conditions.values():
        for parent in cond:
            if parent in space.distributions:
                continue
            base[parent] = choices_[parent] if parent in choices_ else select(job_cfg, parent)
    return base


def _check_eval_split(objectives: Sequence[str], space: SearchSpace, job_cfg) -> None:
    """An eval_* objective needs held-out rows: refused before any trial rather than in every one."""
    if not any(str(o).startswith("eval_") for o in objectives) or any(n.startswith("data.") for n in space.distributions):
        return
    try:
        from ftrun.config import has_eval

        held = has_eval(job_cfg)
    except Exception:  # noqa: BLE001 - not an ftrun config (a custom command): the trials decide
        return
    if not held:
        raise SweepConfigError(f"objective={objectives[0]}: the sweep's data holds out no eval split, so trials "
                               "could only compare train losses; set data.val_size=0.1 (data.num_eval=200 for the "
                               "built-in task)")


def choices(cfg) -> Dict[str, Any]:
    """Hydra's config-group choices of ``cfg`` ({} when it has none)."""
    try:
        return dict(cfg.hydra.runtime.choices)
    except Exception:
        return {}


def select(cfg, key: str, default: Any = None) -> Any:
    """``OmegaConf.select`` that returns ``default`` for any config it cannot read."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=default)
    except Exception:
        return default


def plain(conf: Any) -> Dict[str, Any]:
    """``hydra.sweeper`` as a plain dict."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(conf, DictConfig):
        return OmegaConf.to_container(conf, resolve=True)
    return dict(conf)
