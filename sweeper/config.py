"""``hydra.sweeper`` settings of the ftrun sweeper (registered in Hydra's ``hydra/sweeper`` group).

Keys of Hydra's Optuna sweeper (``sampler`` with ``_target_``, ``direction``,
``storage``, ``study_name``, ``n_trials``, ``n_jobs``, ``max_failure_rate``,
``params``, ``search_space``, ``custom_search_space``) are accepted with the same
meaning, so a config written for that plugin runs here unchanged; the rest are
this sweeper's own. Nothing here imports optuna or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class FtrunSweeperConf:
    _target_: str = "hydra_plugins.ftrun_sweeper.ftrun_sweeper.FtrunSweeper"

    # -- the study -------------------------------------------------------------
    sampler: Any = "tpe"
    """tpe, random, grid, cmaes, qmc, gp, nsgaii, nsgaiii; or {name: tpe, <kwargs>}; or {_target_: ...}."""
    pruner: Any = "median"
    """median, percentile, successive_halving, hyperband, patient, wilcoxon, threshold, none, or promotion (pause at a
    rung and resume when promoted: {name: promotion, reduction_factor: 3, min_resource: auto, teach_sampler: 4}); or
    {name: .., <kwargs>}."""
    seed: Optional[int] = None
    """Seed of the sampler (when the sampler spec gives none)."""
    objectives: Optional[List[str]] = None
    """Metrics of the trial's result.json to optimize; null = [cfg.objective]. Several = multi-objective."""
    direction: Any = None
    """minimize/maximize, or a list (one per objective); null = from the metric's name."""
    storage: Optional[str] = None
    """null/sqlite: <sweep dir>/study.db; journal: <sweep dir>/study.journal; or any Optuna storage URL
    (postgresql://user:password@host/db: one study shared by sweepers on several hosts, see the README)."""
    study_name: Optional[str] = None
    """null: derived from the sweep preset, model, data and a hash of the search space."""

    rung_branch: Optional[float] = None
    """At each rung, report the evaluation of a short decay branch instead of the stable phase's: the trial saves its
    state, trains this share of its steps so far (>= 1) with the learning rate decaying to 0 as the run's own
    decay, evaluates, and restores the state. Needs scheduler=wsd and a pruner. null = off."""

    # -- how many, how parallel ------------------------------------------------
    n_trials: int = 20
    """Total trials wanted in the study (complete + pruned), counting those of earlier runs."""
    n_jobs: int = 1
    """Concurrent trial slots; a slot that frees up starts the next trial at once."""
    gpus_per_trial: Optional[int] = None
    """Devices per trial (null: 1 when there are GPUs, else 0). >1 launches the trial with DDP."""
    devices: Optional[List[str]] = None
    """Device ids handed out to the slots (null: every visible GPU)."""
    launcher: str = "accelerate"
    """Multi-process launcher for gpus_per_trial > 1: accelerate or torchrun."""
    budget_trial_s: Optional[float] = None
    """Compute budget: no new trial starts once the study's trials have used this many trial-seconds (summed wall
    time of every trial, earlier runs of the sweep included; running trials finish). null = no budget."""
    budget_wall_s: Optional[float] = None
    """Wall-clock budget of this run of the sweep: no new trial starts after this many seconds. null = none."""
    max_failures: Optional[int] = None
    """Failed trials this run tolerates before it stops starting new ones (null: max(3, n_trials/4))."""
    max_failure_rate: Optional[float] = None
    """Hydra Optuna sweeper's knob; when set (and max_failures is not), max_failures = rate x n_trials."""
    oom_retry: bool = True
    """Retry an out-of-memory trial once with half the batch and twice the gradient accumulation."""
    memory_limit_gb: Optional[float] = None
    """Memory per device of a slot: a configuration that ftrun.estimate says cannot fit is recorded as pruned, with
    the reason, instead of run into OOM; null = the slot's GPU memory (nvidia-smi), no check on CPU."""
    retry_interrupted: bool = True
    """Retry trials left RUNNING by a killed sweep (from their last checkpoint); false: just fail them."""
    heartbeat_s: float = 10.0
    """How often the sweeper records its running trials' heartbeat (Optuna's heartbeat_interval; whole seconds)."""
    stale_after_s: float = 60.0
    """A RUNNING trial with no heartbeat for this long was left behind by a dead host: a sweeper on any host
    fails it with the reason and retries it (Optuna's grace_period; whole seconds). On the same host a trial
    whose sweeper process is gone is recovered at once."""

    # -- the search space --------------------------------------------------------
    params: Dict[str, Any] = field(default_factory=dict)
    """name: sweep, in Hydra's Optuna-sweeper syntax (interval, tag(log,..), choice, range, int(..)), or a fixed value."""
    auto: Optional[List[Any]] = None
    """sweep=auto's priors: [{methods: [..], max_params_b: .., params: {..}}]; the first entry that fits the run's
    method and model size gives the search space (params and the command line override its keys)."""
    conditions: Dict[str, Any] = field(default_factory=dict)
    """name: {parent: [values]}: sample name only when parent has one of the values."""
    enqueue: List[Any] = field(default_factory=list)
    """Configurations (name: value) to try first, in order; skipped when already in the study."""
    search_space: Dict[str, Any] = field(default_factory=dict)
    """Deprecated dict form of Hydra's Optuna sweeper ({type, low, high, log, step, choices}); merged into params."""
    custom_search_space: Optional[str] = None
    """Hydra Optuna sweeper's Python hook; not supported here (use conditions)."""

    # -- trials ------------------------------------------------------------------
    workers: str = "warm"
    """warm: each slot keeps one worker process that imports the libraries and keeps the tokenized data and base
    weights across trials; fresh: a new process per trial. Multi-process trials and a custom command run fresh."""
    worker_max_trials: int = 50
    """A warm worker is replaced after this many trials (0 = never)."""
    worker_max_rss_mb: Optional[float] = None
    """A warm worker is replaced when its resident memory passes this many MB after a trial (null = no bound)."""
    pack: Any = 1
    """Packed trials: a slot's warm worker trains up to this many compatible LoRA trials at once over one copy of the
    base (same model, method, data, precision and micro-batch size; see "Packed trials" in the README); 1 = off;
    auto = as many as the slot's memory holds by ftrun.estimate (at most 8)."""
    command: Optional[List[str]] = None
    """A trial's entry point; null = [<this python>, -m, ftrun]."""
    mlflow: bool = True
    """A parent MLflow run for the sweep (trials nest under it); off when tracking.enabled=false."""
