"""Every ``hydra.sweeper`` setting checked before the study opens, as :func:`ftrun.config.validate` checks a run.

Hydra has already checked each setting's type (:class:`sweeper.config.FtrunSweeperConf`); this checks ranges,
choices, the search-space syntax, the sampler's and pruner's arguments (by building them), and the fixed
part of the run the trials would share. Every problem is reported at once, each line named by the override
that fixes it (``hydra.sweeper.n_trials=-1: ...``), as one :class:`sweeper.study.SweepConfigError`: the
plugin prints it and exits 2, before any study, sweep directory or trial exists.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Mapping, Sequence

from sweeper.study import SweepConfigError

LAUNCHERS = ("accelerate", "torchrun")
WORKERS = ("warm", "fresh")
DIRECTIONS = ("minimize", "maximize")
# the storage spellings the sweeper resolves itself; anything else must be a URL
STORAGE_NAMES = ("", "sqlite", "journal")


def check_settings(conf: Mapping[str, Any], arguments: Sequence[str] = ()) -> None:
    """Raise :class:`SweepConfigError` listing every bad setting in ``conf`` (``hydra.sweeper``) and every
    search expression in ``arguments`` or ``params`` that does not parse."""
    problems: List[str] = []

    def bad(key: str, why: str) -> None:
        problems.append(f"hydra.sweeper.{key}={_show(conf.get(key))}: {why}")

    _check_counts(conf, bad)
    _check_choices(conf, bad)
    _check_specs(conf, bad)
    _check_space(conf, arguments, problems)
    if problems:
        raise SweepConfigError("invalid sweep settings:\n  " + "\n  ".join(problems))


def check_shared_run(job_cfg, searched: Sequence[str]) -> None:
    """Raise :class:`ftrun.config.ConfigError` with what :func:`ftrun.config.validate` refuses in the run
    every trial shares (the fixed overrides and the config's own values), leaving out the lines about a
    searched key: its sampled value may be the fix. A trial would fail on each of these, one by one."""
    from ftrun.config import ALIASES, ConfigError, display_key, validate

    names = set(searched) | {ALIASES.get(n, n) for n in searched}
    names |= {display_key(n) for n in names}
    try:
        validate(job_cfg)
    except ConfigError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:]]
        kept = [ln for ln in lines if ln.split("=", 1)[0] not in names]
        if kept:
            raise ConfigError("invalid configuration (every trial of the sweep would run with it):\n  "
                              + "\n  ".join(kept)) from None


def check_rung_branch(conf: Mapping[str, Any], job_cfg, searched: Sequence[str]) -> None:
    """Raise :class:`SweepConfigError` when ``hydra.sweeper.rung_branch`` is set for a sweep it cannot serve: a
    decay branch needs the stable phase of scheduler=wsd, a pruner to report to, and one process per trial."""
    share = conf.get("rung_branch")
    if share is None:
        return
    from sweeper.settings import select
    from sweeper.study import pruner_key

    key = f"hydra.sweeper.rung_branch={share}"
    scheduler = select(job_cfg, "scheduler.name")
    if "scheduler" in searched or "scheduler.name" in searched:
        raise SweepConfigError(f"{key}: a decay branch needs every trial on scheduler=wsd; do not search scheduler")
    if scheduler != "warmup_stable_decay":
        raise SweepConfigError(f"{key}: a decay branch starts from a stable phase, and scheduler={scheduler} has "
                               "none; add scheduler=wsd (or hydra.sweeper.rung_branch=null)")
    objectives = conf.get("objectives") or [select(job_cfg, "objective")]
    if len(objectives) > 1:
        raise SweepConfigError(f"{key}: a branch's score goes to the pruner, and Optuna prunes no sweep of several "
                               "objectives; add hydra.sweeper.rung_branch=null (sweep=auto sets it)")
    if pruner_key(conf.get("pruner", "median")) == "none":
        raise SweepConfigError(f"{key}: a branch's score goes to the pruner, and this sweep has none (pruner=none); "
                               "set hydra.sweeper.pruner=promotion (or add hydra.sweeper.rung_branch=null)")
    if (conf.get("gpus_per_trial") or 0) > 1:
        raise SweepConfigError(f"{key}: decay branches run in one process for now; set hydra.sweeper.gpus_per_trial=1 "
                               f"(have {conf.get('gpus_per_trial')}) or add hydra.sweeper.rung_branch=null")


def _check_counts(conf: Mapping[str, Any], bad: Callable[[str, str], None]) -> None:
    def number(key: str, ok: Callable[[float], bool], why: str, optional: bool = True) -> None:
        value = conf.get(key)
        if value is None and optional:
            return
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not ok(value):
            bad(key, why)

    number("n_trials", lambda v: v >= 1, "must be >= 1 (trials wanted in the study)", optional=False)
    number("n_jobs", lambda v: v >= 1, "must be >= 1 (concurrent trial slots)", optional=False)
    number("gpus_per_trial", lambda v: v >= 0, "must be >= 0 (0: CPU), or null for 1 per trial on a GPU machine")
    number("budget_trial_s", lambda v: v > 0, "must be > 0 trial-seconds, or null for no budget")
    number("budget_wall_s", lambda v: v > 0, "must be > 0 seconds, or null for no budget")
    number("memory_limit_gb", lambda v: v > 0, "must be > 0 GB, or null for the slot's GPU memory")
    number("max_failures", lambda v: v >= 0, "must be >= 0, or null for max(3, n_trials/4)")
    number("max_failure_rate", lambda v: 0 <= v <= 1, "must be in [0, 1], or null")
    number("seed", lambda v: 0 <= v < 2 ** 32, "must be in [0, 2**32), or null")
    number("heartbeat_s", lambda v: v > 0, "must be > 0 seconds (Optuna's heartbeat_interval, whole seconds)",
           optional=False)
    number("stale_after_s", lambda v: v > 0, "must be > 0 seconds (Optuna's grace_period, whole seconds)",
           optional=False)
    number("worker_max_trials", lambda v: v >= 0, "must be >= 0 (0: never replace a warm worker)", optional=False)
    number("worker_max_rss_mb", lambda v: v > 0, "must be > 0 MB, or null for no bound")
    if conf.get("pack") != "auto":
        number("pack", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1 (trials trained at once by a "
               "slot; 1: one at a time), or auto (as many as the slot's memory holds)")
    number("rung_branch", lambda v: 0 < v <= 1, "must be in (0, 1] (a decay branch's steps as a share of the "
           "steps trained so far, e.g. 0.15), or null for no branch")


def _check_choices(conf: Mapping[str, Any], bad: Callable[[str, str], None]) -> None:
    if str(conf.get("launcher")) not in LAUNCHERS:
        bad("launcher", f"choose {' or '.join(LAUNCHERS)}")
    if str(conf.get("workers")) not in WORKERS:
        bad("workers", f"choose {' or '.join(WORKERS)}")
    devices = conf.get("devices")
    if devices is not None and (not devices or not all(str(d).strip() for d in devices)):
        bad("devices", "give device ids such as [0,1], or null for every visible GPU")
    command = conf.get("command")
    if command is not None and (not command or not all(str(c).strip() for c in command)):
        bad("command", "give the trial's command as a list such as [python, -m, ftrun], or null")
    objectives = conf.get("objectives")
    if objectives is not None and (not objectives or not all(str(o).strip() for o in objectives)):
        bad("objectives", "name one or more metrics of result.json (eval_loss, ...), or null for cfg.objective")
    direction = conf.get("direction")
    given = direction if isinstance(direction, (list, tuple)) else [direction] if direction is not None else []
    if not all(str(d) in DIRECTIONS for d in given) or (isinstance(direction, (list, tuple)) and not direction):
        bad("direction", "choose minimize or maximize (a list: one per objective), or null")
    storage = conf.get("storage")
    if storage is not None and str(storage) not in STORAGE_NAMES and "://" not in str(storage):
        bad("storage", "give null, sqlite, journal or a URL such as postgresql://user:password@host/db")
    name = conf.get("study_name")
    if name is not None and (not str(name).strip() or "/" in str(name)):
        bad("study_name", "give a non-empty name without '/', or null to derive one")
    if conf.get("custom_search_space"):
        bad("custom_search_space", "not supported by the ftrun sweeper; use hydra.sweeper.conditions")
    for key in ("enqueue", "auto"):
        value = conf.get(key)
        if value and not all(isinstance(v, Mapping) for v in value):
            bad(key, "give a list of mappings (name: value)" if key == "enqueue"
                else "give a list of mappings like {methods: [lora], params: {lr: ...}}")


def _check_specs(conf: Mapping[str, Any], bad: Callable[[str, str], None]) -> None:
    """The sampler and pruner, built as the study would build them (their arguments checked by Optuna)."""
    import warnings

    from sweeper.study import build_pruner, build_sampler, is_grid

    with warnings.catch_warnings():  # Optuna's ExperimentalWarning comes again when the study builds them
        warnings.simplefilter("ignore")
        _build_specs(conf, bad, build_sampler, build_pruner, is_grid)


def _build_specs(conf, bad, build_sampler, build_pruner, is_grid) -> None:
    try:
        if not is_grid(conf.get("sampler", "tpe")):  # the grid sampler needs the space; it is built later
            build_sampler(conf.get("sampler", "tpe"), seed=None)
    except SweepConfigError as e:
        bad("sampler", _reason(e))
    try:
        build_pruner(conf.get("pruner", "median"))
    except SweepConfigError as e:
        bad("pruner", _reason(e))
    if _gp_with_pruner(conf):
        bad("pruner", "Optuna's GP sampler (hydra.sweeper.sampler=gp) learns only from complete trials, "
                      "so it proposes a pruned configuration again and again (bench/sweep_replay.py saw a sweep "
                      "spend its whole budget so); add hydra.sweeper.sampler=tpe to prune, or hydra.sweeper.pruner=none")


def _gp_with_pruner(conf: Mapping[str, Any]) -> bool:
    from sweeper.study import pruner_key, sampler_name

    try:
        return sampler_name(conf.get("sampler", "tpe")) == "GPSampler" and pruner_key(conf.get("pruner")) != "none"
    except SweepConfigError:
        return False  # (a bad spec is reported above)


def _check_space(conf: Mapping[str, Any], arguments: Sequence[str], problems: List[str]) -> None:
    """Parse the search space as the sweep will."""
    from sweeper.space import SearchSpaceError, parse_search_space

    params = dict(conf.get("search_space") or {})
    params.update(conf.get("params") or {})
    try:
        parse_search_space(params, arguments, conf.get("conditions"))
    except SearchSpaceError as e:
        where = "" if any(str(e).startswith(a.split("=", 1)[0] + "=") for a in arguments) else "hydra.sweeper."
        problems.append(f"{where}{e}")


def _reason(e: Exception) -> str:
    text = str(e)
    return text.split(": ", 1)[1] if text.startswith("hydra.sweeper.") and ": " in text else text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)
