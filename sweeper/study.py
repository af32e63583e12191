"""Optuna objects from the sweeper's config: sampler, pruner, storage, directions; the study itself,
opened with them, and its first trials queued.

Each of ``sampler`` and ``pruner`` is given as a name (``tpe``, ``median``), as a
mapping with ``name`` and the constructor's keyword arguments
(``{name: tpe, n_startup_trials: 5}``), or as the Hydra Optuna sweeper's form
with ``_target_: optuna.samplers.TPESampler``. Arguments that are not given keep
Optuna's own defaults (TPE in Optuna 5 is multivariate with constant liar, which
is what asynchronous parallel trials need). Arguments a config written for an
older Optuna passes but the installed one no longer has are dropped with a
warning instead of failing.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ftrun.contract import ATTR_OBJECTIVES

log = logging.getLogger(__name__)

SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "grid": "optuna.samplers.GridSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "qmc": "optuna.samplers.QMCSampler",
    "gp": "optuna.samplers.GPSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "nsgaiii": "optuna.samplers.NSGAIIISampler",
    "bruteforce": "optuna.samplers.BruteForceSampler",
}
PRUNERS = {
    "median": "optuna.pruners.MedianPruner",
    "percentile": "optuna.pruners.PercentilePruner",
    "successive_halving": "sweeper.halving.SuccessiveHalvingPruner",  # Optuna's, min_resource also first_evaluation
    "hyperband": "optuna.pruners.HyperbandPruner",
    "patient": "optuna.pruners.PatientPruner",
    "wilcoxon": "optuna.pruners.WilcoxonPruner",
    "threshold": "optuna.pruners.ThresholdPruner",
    "none": "optuna.pruners.NopPruner",
    "promotion": "sweeper.promotion.PromotionPruner",  # pause and promote (ASHA), not an Optuna pruner
}

# what the trial's result.json keys mean to the study
DIRECTIONS = {
    "eval_loss": "minimize",
    "eval_perplexity": "minimize",
    "eval_exact_match": "maximize",
    "peak_memory_mb": "minimize",
    "train_time_s": "minimize",
    "final_train_loss": "minimize",
}


class SweepConfigError(ValueError):
    """A sweeper setting that cannot be used; the message names it."""


def _split(spec: Any, table: Mapping[str, str], what: str) -> Tuple[str, Dict[str, Any]]:
    """name / {name: .., **kw} / {_target_: .., **kw} -> (dotted class path, kwargs)."""
    if spec is None:
        spec = "none" if what == "pruner" else "tpe"
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        kwargs = {str(k): v for k, v in spec.items()}
        if "_target_" in kwargs:
            return str(kwargs.pop("_target_")), kwargs
        if "name" not in kwargs:
            raise SweepConfigError(f"hydra.sweeper.{what}: give a name ({', '.join(table)}) or _target_")
        name = str(kwargs.pop("name"))
    else:
        raise SweepConfigError(f"hydra.sweeper.{what}={spec!r}: give a name or a mapping")
    key = name.lower().replace("-", "_")
    if key in ("nop", "null"):
        key = "none"
    if key not in table:
        raise SweepConfigError(f"hydra.sweeper.{what}={name}: choose one of {', '.join(table)}")
    return table[key], kwargs


def _construct(path: str, kwargs: Dict[str, Any], what: str):
    module, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise SweepConfigError(f"hydra.sweeper.{what}: cannot import {path} ({e})") from None
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        dropped = [k for k in kwargs if k not in params]
        for k in dropped:
            log.warning("hydra.sweeper.%s.%s: %s in this Optuna has no such argument; ignoring it",
                        what, k, cls_name)
            kwargs.pop(k)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ImportError, ModuleNotFoundError) as e:
        raise SweepConfigError(f"hydra.sweeper.{what}: {cls_name}({_show(kwargs)}) failed: {e}") from None


def sampler_name(spec: Any) -> str:
    path, _ = _split(spec, SAMPLERS, "sampler")
    return path.rsplit(".", 1)[-1]


def is_grid(spec: Any) -> bool:
    return sampler_name(spec) == "GridSampler"


def build_sampler(spec: Any, seed: Optional[int] = None, grid: Optional[Dict[str, List[Any]]] = None):
    """The sampler; ``seed`` fills in when the spec gives none; ``grid`` is the grid sampler's space."""
    path, kwargs = _split(spec, SAMPLERS, "sampler")
    kwargs = _plain(kwargs)
    if seed is not None and kwargs.get("seed") is None:
        kwargs["seed"] = seed
    if path.endswith("GridSampler"):
        kwargs["search_space"] = grid or {}
    return _construct(path, kwargs, "sampler")


def build_pruner(spec: Any):
    """The pruner. ``patient`` wraps another one: ``{name: patient, patience: 2, wrapped_pruner: median}``."""
    path, kwargs = _split(spec, PRUNERS, "pruner")
    kwargs = _plain(kwargs)
    for key in ("wrapped_pruner", "wrapped"):
        if key in kwargs:
            kwargs["wrapped_pruner"] = build_pruner(kwargs.pop(key))
    if path.endswith("PatientPruner"):
        kwargs.setdefault("wrapped_pruner", None)
        kwargs.setdefault("patience", 1)
    return _construct(path, kwargs, "pruner")


def pruner_key(spec: Any) -> str:
    """The pruner's short name (none for no pruning), from any of its spellings."""
    if spec is None:
        return "none"
    if isinstance(spec, str):
        return spec.lower()
    if isinstance(spec, Mapping):
        return str(spec.get("name") or spec.get("_target_", "")).rsplit(".", 1)[-1].lower().replace(
            "nopruner", "none")
    return str(spec)


def directions(objectives: Sequence[str], given: Any = None) -> List[str]:
    """One direction per objective: as given, else from the metric's name."""
    if given is not None:
        given = [given] if isinstance(given, str) else list(given)
        given = [str(getattr(d, "name", d)).lower() for d in given]
        if len(given) != len(objectives):
            raise SweepConfigError(f"hydra.sweeper.direction={given}: give one direction per objective "
                                   f"({', '.join(objectives)})")
        for d in given:
            if d not in ("minimize", "maximize"):
                raise SweepConfigError(f"hydra.sweeper.direction={d}: choose minimize or maximize")
        return given
    try:  # the objectives ftrun's stages define (rm, dpo, kto, ppo ...) know their direction too
        from ftrun.config import OBJECTIVE_DIRECTIONS
    except ImportError:  # pragma: no cover
        OBJECTIVE_DIRECTIONS = {}
    known = {**OBJECTIVE_DIRECTIONS, **DIRECTIONS}
    out = []
    for name in objectives:
        if name not in known:
            raise SweepConfigError(f"hydra.sweeper.objectives: no default direction for {name}; "
                                   f"set hydra.sweeper.direction (known: {', '.join(known)})")
        out.append(known[name])
    return out


def storage_url(storage: Optional[str], sweep_dir: Path) -> str:
    """``null`` / ``sqlite``: ``sqlite:///<sweep_dir>/study.db``; ``journal``: a journal file
    there; anything else is an Optuna storage URL (e.g. postgresql://...)."""
    if storage in (None, "", "sqlite"):
        return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"
    if storage == "journal":
        return f"journal:///{(Path(sweep_dir) / 'study.journal').resolve()}"
    return str(storage)


# A database server's storage, one per process and URL: each RDBStorage holds its own SQLAlchemy engine and pool
# of connections, so a process that opened one per poll (the board's job page, a warm worker's trial after
# trial, a test waiting on a study) held connections until the garbage collector found the engines, and a
# PostgreSQL server refused clients past its max_connections. (SQLite files are left out: a file removed and made
# again under the same URL must not be read through an old connection.)
_SERVER_STORAGES: Dict[tuple, Any] = {}


def open_storage(url: str, heartbeat_s: Optional[float] = None, grace_s: Optional[float] = None):
    """An Optuna storage for ``url`` that tolerates several processes writing at once.

    With ``heartbeat_s`` an RDB storage (SQLite, PostgreSQL, MySQL) keeps Optuna's own heartbeat table: the
    sweeper records each running trial's heartbeat and a trial silent for ``grace_s`` seconds is stale
    (measured by the database server's clock, so hosts whose clocks differ agree). A journal file has no
    heartbeats; the sweeper then falls back to a heartbeat kept in the trials' user attributes.
    """
    import optuna

    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:///") - 1:]
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        return url
    key = (os.getpid(), url, heartbeat_s, grace_s)
    if key in _SERVER_STORAGES:
        return _SERVER_STORAGES[key]
    beat = {}
    if heartbeat_s is not None:  # Optuna takes whole seconds
        beat = {"heartbeat_interval": max(1, round(heartbeat_s)),
                "grace_period": max(1, round(grace_s if grace_s is not None else 2 * heartbeat_s))}
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 120}}} if url.startswith("sqlite:") else \
        {"engine_kwargs": {"pool_pre_ping": True}}  # a server that restarted drops pooled connections
    import warnings

    import sqlalchemy.exc

    for attempt in range(10):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, **kwargs, **beat)
            if not url.startswith("sqlite:"):
                _SERVER_STORAGES[key] = storage
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # sweepers on several hosts opening a new database at once each create Optuna's tables;
            # all but one fail on "already exists": by the time they try again the tables are there
            if attempt == 9:
                raise
            log.debug("Optuna storage %s: %s; trying again", safe_url(url), str(e).splitlines()[0])
            time.sleep(0.5 + random.random())


def require_driver(url: str) -> None:
    """A clear message when the database's Python driver is missing (before any model loads)."""
    drivers = {"postgresql": ("psycopg", "pip install 'psycopg[binary]'"),
               "mysql": ("pymysql", "pip install pymysql")}
    scheme = url.split("://", 1)[0].split("+", 1)
    if scheme[0] in drivers and len(scheme) == 1:
        module, fix = drivers[scheme[0]]
        try:
            importlib.import_module(module)
        except ImportError:
            raise SweepConfigError(f"hydra.sweeper.storage={safe_url(url)}: the driver {module} is not "
                                   f"installed ({fix}, or pip install -e '.[test]')") from None


def safe_url(url: str) -> str:
    """The storage URL with its password (if any) masked, for logs, tags and summaries."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def _plain(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                for k, v in kwargs.items()}
    except ImportError:  # pragma: no cover
        return dict(kwargs)


def _show(kwargs: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def set_study_attr(study, key: str, value: Any) -> None:
    """``study.set_user_attr``, safe when sweepers on several hosts set the same new key at once (Optuna
    inserts a study attribute without an upsert: the second insert fails, and a second try updates)."""
    try:
        study.set_user_attr(key, value)
    except Exception as e:
        if "IntegrityError" not in type(e).__name__ and "unique" not in str(e).lower():
            raise
        study.set_user_attr(key, value)


# ---------------------------------------------------------------------------
# the study itself


def open_study(s) -> Tuple[Any, bool]:
    """Open (or create) the study of ``s`` (:class:`sweeper.settings.Settings`); returns (study, founder), founder
    being whether this sweeper created it (and so creates the sweep's MLflow parent run)."""
    import optuna

    storage = open_storage(s.storage_url, s.heartbeat_s, s.stale_after_s)
    seed = s.conf.get("seed")
    if s.grid:
        # every grid point is enqueued (see enqueue_grid); optuna's GridSampler itself cannot serve
        # ask-and-tell (it calls study.stop()), partial enqueues or conditional parameters
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        if seed is not None and s.shared:  # sweepers on other hosts that start together must not draw the same
            seed = int(seed) + zlib.crc32(f"{s.host}:{os.getpid()}".encode()) % 100_000  # startup points
        # a resumed study must not replay the startup points the same seed drew in the first run
        done = _n_trials(storage, s.study_name)
        sampler = build_sampler(s.conf.get("sampler", "tpe"), seed=None if seed is None else int(seed) + done)
    founder = False
    if not isinstance(storage, str):
        # creating the study is atomic in the storage: exactly one of several sweepers started
        # together founds it, and that one creates the sweep's MLflow parent run for all of them
        from optuna.study import StudyDirection

        try:
            storage.create_new_study([StudyDirection[d.upper()] for d in s.directions], s.study_name)
            founder = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    pruner = build_pruner(s.pruner_spec)
    from sweeper.promotion import PromotionPruner

    if isinstance(pruner, PromotionPruner):  # pause and promote: the sampler learns from paused trials too
        sampler = pruner.taught(sampler)
    study = optuna.create_study(study_name=s.study_name, storage=storage, sampler=sampler,
                                pruner=pruner, directions=s.directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != s.directions:
        raise SweepConfigError(f"study {s.study_name} in {safe_url(s.storage_url)} optimizes {have}, "
                               f"this sweep {s.directions}; give another hydra.sweeper.study_name")
    values = {"search_space": s.space.describe(), "fixed": s.space.fixed, ATTR_OBJECTIVES: s.objectives,
              "sweep_dir": str(s.sweep_dir)}
    if "created" not in study.user_attrs:
        values["created"] = time.time()
    for key, value in values.items():
        if study.user_attrs.get(key) != value:
            set_study_attr(study, key, value)
    return study, founder


def enqueue_first(study, s) -> None:
    """Queue ``hydra.sweeper.enqueue`` (each point's active, searched parameters) and, for ``sampler: grid``,
    every grid point; points the study has seen are skipped."""
    for i, point in enumerate(s.conf.get("enqueue") or []):
        params = _active(s, dict(point), f"hydra.sweeper.enqueue[{i}]")
        if params:
            study.enqueue_trial(params, skip_if_exists=True)
    if s.grid:
        enqueue_grid(study, s.space)


def enqueue_grid(study, space) -> int:
    """``sampler: grid``: enqueue every point of the grid (upper bounds of ranges included,
    conditional parameters only where active) that the study has not seen; returns the grid size."""
    points = space.grid_points()
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    return len(points)


def _active(s, point: Dict[str, Any], where: str) -> Dict[str, Any]:
    space = s.space
    unknown = [k for k in point if k not in space.distributions]
    if unknown:
        log.info("%s: %s not searched in this sweep; ignored", where, ", ".join(unknown))
    values = {**s.base_values, **space.fixed}
    out = {}
    for name in space.order():
        if name in point and space.active(name, {**values, **out}):
            out[name] = point[name]
    return out


def _n_trials(storage, study_name: str) -> int:
    """Trials the study already has (0 for a new study)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))
