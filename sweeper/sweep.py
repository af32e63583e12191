"""The sweep: an Optuna study driven by ask-and-tell, one fresh process per trial.

:func:`run_sweep` is what ``python -m ftrun -m ...`` ends up in (through the thin
Hydra plugin in ``hydra_plugins/ftrun_sweeper``). It

1. opens (or resumes) the study in persistent storage: ``<hydra.sweep.dir>/<study_name>/study.db``
   unless ``hydra.sweeper.storage`` names another;
2. fails or retries trials that a killed sweep left RUNNING: at once when that sweep ran on this
   host (its process is gone), else once Optuna's heartbeat of the trial is older than
   ``stale_after_s`` (several sweepers on other hosts may share the study: see "From one machine
   to a cluster" in the README); this is checked throughout the sweep, not only at its start;
3. enqueues the configured first trials (and every grid point for ``sampler: grid``);
4. keeps ``n_jobs`` slots busy: whenever a trial process ends, its result is told
   to the study and the next trial starts in that slot at once;
5. keeps an MLflow parent run current (trials are nested children) and writes a
   summary with the best trial and the command that reruns it.

A trial is ``python -m ftrun <fixed overrides> <sampled overrides> hydra.run.dir=<sweep dir>/trial_NNNN``;
its objective comes from ``<trial dir>/result.json``; its process reports
intermediate values and obeys the pruner itself (:mod:`sweeper.trial`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ftrun.contract import (ATTR_FAIL_REASON, ATTR_OBJECTIVES, ATTR_OOM_RETRY, ATTR_OVERRIDES, ATTR_PRUNED,
                            ATTR_SURPLUS, ATTR_TRIAL_DIR, MLFLOW_URI_ENV, TAG_RETRY_OF, TRIAL_LOG)
from ftrun.contract import MLFLOW_PARENT_RUN_ENV as PARENT_ENV
from sweeper.parent import ParentRun
from sweeper.outcome import diverged, error_reason, has_checkpoint, is_oom, log_tail, read_result
from sweeper.slots import Slot, make_slots, popen, stop, trial_command
from sweeper.space import SearchSpace, parse_search_space, to_override
from sweeper.summary import build_summary
from sweeper.study import (
    SweepConfigError,
    build_pruner,
    build_sampler,
    directions,
    is_grid,
    open_storage,
    pruner_key,
    require_driver,
    safe_url,
    sampler_name,
    set_study_attr,
    storage_url,
)
from sweeper.live import SweepView, rows_from_study
from sweeper.trial import trial_env
from sweeper.worker import WarmTrial, Worker

log = logging.getLogger("ftrun.sweeper")


class SweepError(RuntimeError):
    """The sweep stopped early (too many failed trials); the summary says which."""


@dataclass
class Running:
    trial: Any  # optuna.trial.Trial
    slot: Slot
    proc: Any  # subprocess.Popen
    trial_dir: Path
    overrides: List[str]
    extra: List[str]
    started: float
    oom_retried: bool = False


@dataclass
class SweepResult:
    study_name: str
    storage: str
    sweep_dir: Path
    counts: Dict[str, int]
    best_trials: List[int]
    best_values: List[List[float]]
    rerun: List[str]
    summary_path: Path
    parent_run_id: Optional[str] = None
    stopped_reason: Optional[str] = None


# ---------------------------------------------------------------------------
# entry point


def run_sweep(conf: Mapping[str, Any], arguments: Sequence[str], job_cfg, sweep_root: Path,
              entry_args: Sequence[str] = ()) -> SweepResult:
    """Run (or resume) the sweep described by ``conf`` (``hydra.sweeper``).

    ``arguments``: the command-line task overrides (sweeps and fixed values);
    ``job_cfg``: the composed config with the fixed overrides applied (for the
    objective, tracking settings and the values conditions refer to);
    ``entry_args``: extra arguments for every trial command (``--config-name`` ...).
    """
    conf = _plain(conf)
    params = dict(conf.get("search_space") or {})
    if conf.get("auto"):  # sweep=auto: the priors for this method and model size
        from sweeper.auto import auto_params, count_parameters

        prior, why = auto_params(conf["auto"], str(_select(job_cfg, "method.name")),
                                 count_parameters(_select(job_cfg, "model")))
        log.info("%s: %s", why, ", ".join(f"{k}={v}" for k, v in prior.items()))
        params.update(prior)
    params.update(conf.get("params") or {})
    if conf.get("custom_search_space"):
        raise SweepConfigError("hydra.sweeper.custom_search_space: not supported by the ftrun sweeper; "
                               "express dependent parameters with hydra.sweeper.conditions")
    space = parse_search_space(params, arguments, conf.get("conditions"))
    if not space.distributions:
        raise SweepConfigError("the sweep has no search space: give sweeps such as 'lr=tag(log,interval(1e-5,1e-1))' "
                               "on the command line, in hydra.sweeper.params, or pick a preset (sweep=lora_search)")
    sweep = Sweep(conf, space, job_cfg, Path(sweep_root), entry_args)
    return sweep.run()


class Sweep:
    def __init__(self, conf: Mapping[str, Any], space: SearchSpace, job_cfg, sweep_root: Path,
                 entry_args: Sequence[str] = ()):
        import optuna

        self.optuna = optuna
        self.conf = dict(conf)
        self.space = space
        self.job_cfg = job_cfg
        self.entry_args = list(entry_args)
        self.objectives = list(conf.get("objectives") or [job_cfg.objective])
        self.directions = directions(self.objectives, conf.get("direction"))
        _check_eval_split(self.objectives, space, job_cfg)
        self.multi = len(self.objectives) > 1
        self.grid = is_grid(conf.get("sampler", "tpe"))
        self.study_name = conf.get("study_name") or self._derive_name()
        self.sweep_dir = (Path(sweep_root) / self.study_name).resolve()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = storage_url(conf.get("storage"), self.sweep_dir)
        require_driver(self.storage_url)
        # a storage URL given by the user may be shared with sweepers on other hosts (which then
        # draw from their own seeds and look for each other's dead trials throughout)
        self.shared = conf.get("storage") not in (None, "", "sqlite", "journal")
        self.founder = False  # whether this sweeper created the study (and so its MLflow parent run)
        n_trials = int(conf.get("n_trials", 20))
        if self.grid or (space.finite() and space.grid_size() < n_trials):
            size = space.grid_size()  # a finite space (e.g. lr=1e-4,1e-3): no point in more trials than configs
            if n_trials > size:
                log.info("The search space has %d configurations: n_trials %d -> %d", size, n_trials, size)
            n_trials = min(n_trials, size)
        self.n_trials = n_trials
        self.max_failures = self._max_failures(n_trials)
        self.pruner_spec = conf.get("pruner", "median")
        if self.multi and pruner_key(self.pruner_spec) != "none":
            log.warning("%d objectives: Optuna cannot prune multi-objective trials; pruning is off",
                        len(self.objectives))
            self.pruner_spec = "none"
        self.command = list(conf.get("command") or [sys.executable, "-m", "ftrun"])
        self.host = socket.gethostname()
        self.experiment = str(_select(job_cfg, "tracking.experiment", "ftrun"))  # MLflow experiment of the parent run
        self.base_values = self._base_values()
        self.failures = 0
        self._repeats = 0  # configurations proposed again and answered from the study, this run
        self.running: Dict[int, Running] = {}
        self.parent = None
        self.workers_mode = str(conf.get("workers", "warm"))
        if self.workers_mode not in ("warm", "fresh"):
            raise SweepConfigError(f"hydra.sweeper.workers={self.workers_mode}: choose warm or fresh")
        self.workers: Dict[int, Worker] = {}  # slot index -> its warm worker
        self.budget_trial_s = _positive(conf.get("budget_trial_s"), "budget_trial_s")
        self.budget_wall_s = _positive(conf.get("budget_wall_s"), "budget_wall_s")
        _positive(conf.get("memory_limit_gb"), "memory_limit_gb")  # refused now, not at the first launch
        self._budget_spent = False
        self._started = time.time()

    # -- setup -------------------------------------------------------------------
    def _derive_name(self) -> str:
        cfg = self.job_cfg
        choices = _choices(cfg)
        prefix = choices.get("sweep") or choices.get("method") or "sweep"
        parts = [str(prefix), _select(cfg, "model.name", "model"), _select(cfg, "data.name", "data")]
        fp = _fingerprint(self.space, self.objectives)
        return "-".join(str(p) for p in parts if p) + f"-{fp}"

    def _max_failures(self, n_trials: int) -> int:
        if self.conf.get("max_failures") is not None:
            return int(self.conf["max_failures"])
        if self.conf.get("max_failure_rate") is not None:
            return int(math.floor(float(self.conf["max_failure_rate"]) * n_trials))
        return max(3, math.ceil(n_trials / 4))

    def _base_values(self) -> Dict[str, Any]:
        """Values of condition parents that are not searched: fixed overrides or the config's own."""
        base = {}
        choices = _choices(self.job_cfg)
        for cond in self.space.conditions.values():
            for parent in cond:
                if parent in self.space.distributions:
                    continue
                base[parent] = choices[parent] if parent in choices else _select(self.job_cfg, parent)
        return base

    def _open_study(self):
        optuna = self.optuna
        storage = open_storage(self.storage_url, float(self.conf.get("heartbeat_s", 10.0)),
                               float(self.conf.get("stale_after_s", 60.0)))
        sampler_spec = self.conf.get("sampler", "tpe")
        seed = self.conf.get("seed")
        if self.grid:
            # every grid point is enqueued (see enqueue_grid); optuna's GridSampler itself cannot serve
            # ask-and-tell (it calls study.stop()), partial enqueues or conditional parameters
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            # a resumed study must not replay the startup points the same seed drew in the first run
            done = _n_trials(storage, self.study_name)
            if seed is not None and self.shared:
                # sweepers on other hosts that start together must not draw the same startup points
                import zlib

                seed = int(seed) + zlib.crc32(f"{self.host}:{os.getpid()}".encode()) % 100_000
            sampler = build_sampler(sampler_spec, seed=None if seed is None else int(seed) + done)
        pruner = build_pruner(self.pruner_spec)
        if not isinstance(storage, str):
            # creating the study is atomic in the storage: exactly one of several sweepers started
            # together founds it, and that one creates the sweep's MLflow parent run for all of them
            from optuna.study import StudyDirection

            try:
                storage.create_new_study([StudyDirection[d.upper()] for d in self.directions], self.study_name)
                self.founder = True
            except optuna.exceptions.DuplicatedStudyError:
                pass
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=self.directions, load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        if have != self.directions:
            raise SweepConfigError(f"study {self.study_name} in {safe_url(self.storage_url)} optimizes {have}, "
                                   f"this sweep {self.directions}; give another hydra.sweeper.study_name")
        attrs = study.user_attrs
        values = {"search_space": self.space.describe(), "fixed": self.space.fixed, ATTR_OBJECTIVES: self.objectives,
                  "sweep_dir": str(self.sweep_dir)}
        if "created" not in attrs:
            values["created"] = time.time()
        for key, value in values.items():
            if attrs.get(key) != value:
                set_study_attr(study, key, value)
        return study

    # -- the loop ------------------------------------------------------------------
    def run(self) -> SweepResult:
        optuna = self.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = self._open_study()
        prior = self._counts()
        log.info("Study %s (%s, %s) in %s: %d of %d trials done; search space: %s",
                 self.study_name, sampler_name(self.conf.get("sampler", "tpe")), pruner_key(self.pruner_spec),
                 safe_url(self.storage_url), prior["COMPLETE"] + prior["PRUNED"], self.n_trials,
                 ", ".join(f"{k}={v}" for k, v in self.space.describe().items()))
        self.parent = ParentRun.open(self) if self._tracking() else None
        self._recover_left_behind()
        self._enqueue()
        self.view = SweepView(self.study_name, self.n_trials, self.objectives[0], self.directions[0],  # sweeper.live
                              self.budget_trial_s, self.budget_wall_s, ["python", "-m", "ftrun", *self.entry_args])
        self.view.start(rows_from_study(self.study))
        slots = make_slots(int(self.conf.get("n_jobs", 1)), self.conf.get("gpus_per_trial"),
                           self.conf.get("devices"))
        for s in slots:
            log.info("Sweep %s", s.describe())
        free = list(slots)
        stopped: Optional[str] = None
        # SIGTERM / Ctrl-C only set a flag that the loop checks between steps: raising from inside
        # a storage write would leave the study's database locked for the clean-up that follows
        self._stop_signal: Optional[int] = None
        in_main = _in_main_thread()
        previous = {}
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._request_stop)
        last_beat = 0.0
        try:
            while True:
                if self._stop_signal is not None:
                    self._interrupt()
                    raise SweepError(f"interrupted by signal {self._stop_signal}; rerun the same command to "
                                     "resume (the running trials will be retried)")
                for r in list(self.running.values()):
                    if r.proc.poll() is not None:
                        if self._finish(r):
                            free.append(r.slot)
                            free.sort(key=lambda s: s.index)
                if stopped is None and self.failures > self.max_failures:
                    stopped = (f"{self.failures} failed trials (more than max_failures={self.max_failures}); "
                               "no new trials started")
                    log.error("Sweep: %s", stopped)
                if stopped is None and self.budget_left() <= 0 and not self._budget_spent:
                    self._budget_spent = True
                    log.info("Sweep: the compute budget is spent (%s); no new trials start", self._budget_text())
                need = self._need() if stopped is None and not self._budget_spent else 0
                while need > 0 and free:
                    if self._launch(free[0]):
                        free.pop(0)
                        need -= 1
                    else:  # a configuration already trained: answered from the study, ask again
                        need = self._need()
                now = time.time()
                if not self.running:
                    if stopped is not None or self._budget_spent or not self._others_running():
                        break
                    # RUNNING trials that are not ours: another sweeper's, or one a killed sweeper asked for
                    # before it could record itself; wait, and fail (and retry) them once they are stale
                    if now - last_beat >= float(self.conf.get("heartbeat_s", 10.0)):
                        self._recover_left_behind()
                        last_beat = now
                    self._wait(1.0)
                    continue
                if now - last_beat >= float(self.conf.get("heartbeat_s", 10.0)):
                    self._heartbeat(now)
                    if self.shared:  # another host's trials may have been left behind meanwhile
                        self._recover_left_behind()
                    last_beat = now
                self._wait(0.2)
        finally:
            self.view.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close_workers()
        result = self._summarize(stopped)
        if stopped is not None:
            raise SweepError(f"{stopped}; see {result.summary_path}")
        return result

    def _wait(self, timeout: float) -> None:
        """Sleep until a warm trial replies or ``timeout`` passes (fresh trials are polled)."""
        replies = [r.proc.worker.reply_file for r in self.running.values() if isinstance(r.proc, WarmTrial)]
        if replies:
            select.select(replies, [], [], timeout)
        else:
            time.sleep(timeout)

    # -- budget ----------------------------------------------------------------------
    def trial_seconds(self) -> float:
        """Compute spent on this study: finished trials' wall time (all runs of the sweep) plus the running ones'."""
        now = time.time()
        done = sum(float(t.user_attrs.get("duration_s") or 0.0) for t in self.study.get_trials(deepcopy=False)
                   if t.state.is_finished())
        return done + sum(now - r.started for r in self.running.values())

    def budget_left(self) -> float:
        """Seconds left in the tighter of the two budgets (inf without one)."""
        left = math.inf
        if self.budget_trial_s is not None:
            left = min(left, self.budget_trial_s - self.trial_seconds())
        if self.budget_wall_s is not None:
            left = min(left, self.budget_wall_s - (time.time() - self._started))
        return left

    def _budget_text(self) -> str:
        parts = []
        if self.budget_trial_s is not None:
            parts.append(f"{self.trial_seconds():.0f} of {self.budget_trial_s:.0f} trial-s")
        if self.budget_wall_s is not None:
            parts.append(f"{time.time() - self._started:.0f} of {self.budget_wall_s:.0f} wall s")
        return ", ".join(parts)

    def _others_running(self) -> bool:
        TrialState = self.optuna.trial.TrialState
        mine = {r.trial.number for r in self.running.values()}
        return any(t.number not in mine for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def _need(self) -> int:
        """Trials still to start: total wanted minus finished minus running (here or elsewhere)."""
        c = self._counts()
        done = c["COMPLETE"] + c["PRUNED"] + (c["FAIL"] if self.grid else 0)
        return self.n_trials - done - c["RUNNING"]

    def _counts(self) -> Dict[str, int]:
        """Trials by state; repeats of a trained configuration (``duplicate_of``) and trials asked for
        beyond n_trials (``surplus``) are counted apart."""
        counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "DUPLICATE", "SURPLUS")}
        for t in self.study.get_trials(deepcopy=False):
            state = ("DUPLICATE" if "duplicate_of" in t.user_attrs else
                     "SURPLUS" if ATTR_SURPLUS in t.user_attrs else t.state.name)
            counts[state] = counts.get(state, 0) + 1
        return counts

    def _counted(self, t) -> bool:
        """Whether trial ``t`` counts toward n_trials now (running ones included)."""
        TrialState = self.optuna.trial.TrialState
        if "duplicate_of" in t.user_attrs or ATTR_SURPLUS in t.user_attrs:
            return False
        return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
            self.grid and t.state == TrialState.FAIL)

    def _ask(self):
        """A new trial from the study, or None when other sweepers took the last of n_trials meanwhile.

        Sweepers on several hosts each see room for one more trial and ask at the same moment; the
        storage numbers their trials in order, so the rule "a trial runs only if fewer than n_trials
        counted trials have lower numbers" lets exactly the first ones run, whatever each host saw.
        """
        import warnings

        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for study.optimize;
            warnings.simplefilter("ignore")  # with ask-and-tell the sweeper records them itself
            trial = self.study.ask()
        self._beat(trial._trial_id)  # at once: a trial without a heartbeat is never found stale
        before = sum(1 for t in self.study.get_trials(deepcopy=False)
                     if t.number < trial.number and self._counted(t))
        if before < self.n_trials:
            return trial
        TrialState = self.optuna.trial.TrialState
        trial.set_user_attr(ATTR_SURPLUS, True)
        trial.set_user_attr(ATTR_FAIL_REASON, f"not run: other sweepers had already started the last of "
                                              f"n_trials={self.n_trials}")
        frozen = self.study._storage.get_trial(trial._trial_id)
        fixed = frozen.system_attrs.get("fixed_params") or frozen.params
        self.study.tell(trial, state=TrialState.FAIL)
        if fixed:  # an enqueued configuration (or a retry) goes back into the queue
            attrs = {k: v for k, v in trial.user_attrs.items() if k not in (ATTR_SURPLUS, ATTR_FAIL_REASON)}
            self.study.enqueue_trial(fixed, user_attrs=attrs)
        log.info("Trial %d not needed: the study already has %d trials; waiting for the others", trial.number,
                 self.n_trials)
        return None

    def _trained(self, params: Dict[str, Any]):
        """A COMPLETE trial (not itself a repeat) with exactly these parameters, if any."""
        TrialState = self.optuna.trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params and "duplicate_of" not in t.user_attrs:
                return t
        return None

    # -- one trial ---------------------------------------------------------------
    def _launch(self, slot: Slot, trial=None, extra: Sequence[str] = (), trial_dir: Optional[Path] = None,
                oom_retried: bool = False) -> bool:
        """Start a trial in ``slot``; False when the sampler proposed a configuration already trained."""
        if trial is None:
            trial = self._ask()
            if trial is None:
                return False
            params = self.space.sample(trial, self.base_values)
            same = self._trained(params) if self._repeats < max(100, 10 * self.n_trials) else None
            if same is not None and trial.user_attrs.get(TAG_RETRY_OF) is None:
                # training is seeded, so the same configuration gives the same result: tell the
                # sampler the known value instead of spending a slot (it does not count in n_trials)
                self._repeats += 1
                trial.set_user_attr("duplicate_of", same.number)
                self.study.tell(trial, values=list(same.values))
                log.info("Trial %d repeats trial %d's configuration: not trained again", trial.number, same.number)
                return False
            busy = next((r.trial for r in self.running.values() if r.trial.params == params), None)
            if busy is not None and trial.user_attrs.get(TAG_RETRY_OF) is None and self._repeats < 10 * self.n_trials:
                # two slots must not train the same configuration at once (a small categorical space
                # makes that likely among random startup points): ask again
                self._repeats += 1
                trial.set_user_attr("duplicate_of", busy.number)
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                log.info("Trial %d: trial %d is training the same configuration now; asking again",
                         trial.number, busy.number)
                return False
            extra = list(trial.user_attrs.get("extra", []))
            resume_dir = trial.user_attrs.get("resume_dir")
            trial_dir = self.sweep_dir / f"trial_{trial.number:04d}"
            if resume_dir and has_checkpoint(Path(resume_dir)):
                trial_dir = Path(resume_dir)  # continue the interrupted trial from its last checkpoint
                extra = [e for e in extra if not e.startswith("resume=")] + ["resume=auto"]
        else:
            params = dict(trial.params)
        overrides = [f"{k}={v}" for k, v in self.space.fixed.items()] + [to_override(k, v) for k, v in params.items()]
        overrides = _replace(overrides, extra)
        trial_dir.mkdir(parents=True, exist_ok=True)
        args = [*self.entry_args, *overrides, f"hydra.run.dir={trial_dir}"]
        if not oom_retried and self._too_big(trial, slot, args):
            return False
        cmd = trial_command(self.command, args, processes=slot.processes,
                            launcher=self.conf.get("launcher", "accelerate"))
        env = trial_env(self.storage_url, self.study_name, trial._trial_id, trial.number,
                        pruner=None if pruner_key(self.pruner_spec) == "none" else self.pruner_spec,
                        objective=self.objectives[0])
        env.update(self._mlflow_env())
        now = time.time()
        for key, value in {ATTR_TRIAL_DIR: str(trial_dir), ATTR_OVERRIDES: overrides, "extra": list(extra),
                           "sweeper_host": self.host, "sweeper_pid": os.getpid(),
                           "slot": slot.index, "devices": ",".join(slot.gpus) or "cpu"}.items():
            trial.set_user_attr(key, value)
        warm = self._warm(slot)
        with open(trial_dir / TRIAL_LOG, "ab") as f:
            f.write(f"\n$ {shlex.join(cmd)}{'   # in a warm worker' if warm else ''}\n".encode())
        now = time.time()  # the trial's time starts when it is handed to its process
        if warm:
            worker = self._worker(slot)
            trial.set_user_attr("worker_pid", worker.pid)
            trial.set_user_attr("worker_trial", worker.trials + 1)  # 1: the worker's first, which pays its start
            proc = WarmTrial(worker, {"args": args, "env": env, "log": str(trial_dir / TRIAL_LOG)})
        else:
            proc = popen(cmd, slot, env, trial_dir / TRIAL_LOG)
        log.info("Trial %d started (%s%s): %s", trial.number, slot.describe(), ", warm worker" if warm else "",
                 " ".join(overrides))
        self.running[slot.index] = Running(trial, slot, proc, trial_dir, overrides, list(extra), now, oom_retried)
        self.view.trial_started(trial.number, params, overrides)
        return True

    def _too_big(self, trial, slot: Slot, args: List[str]) -> bool:
        """Record the trial as pruned, without running it, when the memory estimate says it cannot fit."""
        limit = slot_memory_bytes(self.conf.get("memory_limit_gb"), slot)
        if limit is None:
            return False
        from ftrun.estimate import fits
        from sweeper.worker import compose_trial

        try:
            cfg = compose_trial(args)[0]
            ok, reason = fits(cfg, limit, devices=max(1, slot.processes))
        except Exception as e:  # noqa: BLE001 - an estimate that cannot be made does not stop the trial
            log.warning("Trial %d: no memory estimate (%s); running it", trial.number, e)
            return False
        if ok:
            return False
        trial.set_user_attr(ATTR_FAIL_REASON, f"skipped before launch: {reason}"[:1000])
        trial.set_user_attr(ATTR_PRUNED, True)
        trial.set_user_attr("memory_skipped", True)
        self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
        log.info("Trial %d pruned before launch (%s): %s", trial.number, slot.describe(), reason)
        self.view.trial_finished(trial.number, "PRUNED", None, 0.0, "skipped: too big for the slot")
        return True

    def _finish(self, r: Running) -> bool:
        """Tell the study how the trial ended; False when it was relaunched in the same slot."""
        TrialState = self.optuna.trial.TrialState
        del self.running[r.slot.index]
        rc = r.proc.returncode
        result = read_result(r.trial_dir, since=r.started)
        tail = log_tail(r.trial_dir / TRIAL_LOG)
        trial = r.trial
        state, values, reason = TrialState.FAIL, None, None
        if rc == 0 and result is not None:
            if result.get("pruned") and not self.multi:
                state = TrialState.PRUNED
            else:
                try:
                    values = [float(result[o]) for o in self.objectives]
                except (KeyError, TypeError, ValueError):
                    reason = f"result.json has no {' / '.join(self.objectives)} (keys: {', '.join(result)})"
                else:
                    if all(math.isfinite(v) for v in values):
                        state = TrialState.COMPLETE
                    else:
                        reason, values = f"objective is not finite: {values}", None
        elif diverged(result):  # NaN loss or gradient: a result of the sampled point, not a broken setup
            reason = f"diverged: {result.get('reason')}"
            if not self.multi:  # PRUNED counts toward n_trials and tells the sampler to look elsewhere
                state = TrialState.PRUNED
        elif is_oom(tail) and self.conf.get("oom_retry", True) and not r.oom_retried:
            retry = self._oom_overrides(r)
            if retry is not None:
                log.warning("Trial %d ran out of memory; retrying once with %s", trial.number, " ".join(retry))
                trial.set_user_attr(ATTR_OOM_RETRY, " ".join(retry))
                if self.parent:
                    self.parent.tag_child(r.trial_dir, trial, "FAIL", "out of memory (retried)")
                self._launch(r.slot, trial=trial, extra=[*r.extra, *retry],
                             trial_dir=r.trial_dir.with_name(r.trial_dir.name + "_oom_retry"), oom_retried=True)
                return False
            reason = error_reason(tail, rc)
        else:
            reason = "finished without result.json" if rc == 0 else error_reason(tail, rc)
        if isinstance(r.proc, WarmTrial):
            reason = self._after_warm_trial(r, reason)
        if reason:
            trial.set_user_attr(ATTR_FAIL_REASON, reason[:1000])
        duration = time.time() - r.started
        trial.set_user_attr("duration_s", duration)
        if result is not None and result.get("pruned"):
            trial.set_user_attr(ATTR_PRUNED, True)
        if diverged(result):
            trial.set_user_attr("diverged", True)
        try:
            self.study.tell(trial, values=values, state=state)
        except self.optuna.exceptions.UpdateFinishedTrialError:
            # another sweeper found its heartbeat stale (this host stalled longer than stale_after_s)
            # and failed and retried it; its result stays in the trial's directory
            log.warning("Trial %d finished (%s) after another sweeper had failed it as stale; it was retried",
                        trial.number, state.name)
            return True
        if state == TrialState.FAIL:
            self.failures += 1
            log.warning("Trial %d FAILED after %.0f s: %s", trial.number, duration, reason)
        elif state == TrialState.PRUNED:
            log.info("Trial %d PRUNED after %.0f s%s", trial.number, duration, f" ({reason})" if reason else "")
        else:
            log.info("Trial %d done in %.0f s: %s", trial.number, duration,
                     ", ".join(f"{o}={v:.4g}" for o, v in zip(self.objectives, values)))
        self.view.trial_finished(trial.number, state.name, values[0] if values else None, duration, reason)
        if self.parent:
            self.parent.tag_child(r.trial_dir, trial, state.name, reason, overrides=r.overrides,
                                  oom_retry=r.oom_retried)
            self.parent.update(self.study, self.multi)
        return True

    # -- warm workers --------------------------------------------------------------
    def _warm(self, slot: Slot) -> bool:
        """Whether this slot's trials run in a warm worker: ftrun's own entry point, one process per trial."""
        return self.workers_mode == "warm" and not self.conf.get("command") and slot.processes == 1

    def _worker(self, slot: Slot) -> Worker:
        worker = self.workers.get(slot.index)
        if worker is None or not worker.alive():
            n = sum(1 for _ in (self.sweep_dir / "workers").glob(f"slot{slot.index}_*.log")) \
                if (self.sweep_dir / "workers").is_dir() else 0
            worker = Worker(slot, self.sweep_dir / "workers" / f"slot{slot.index}_{n:03d}.log",
                            env={"TOKENIZERS_PARALLELISM": "false"})
            self.workers[slot.index] = worker
        return worker

    def _after_warm_trial(self, r: Running, reason: Optional[str]) -> Optional[str]:
        """A dead worker is the trial's failure and is replaced; a worn one is retired."""
        worker = r.proc.worker
        if r.proc.worker_died:
            self.workers.pop(r.slot.index, None)
            worker.close()
            why = reason or f"exit status {r.proc.returncode}"
            return (f"its warm worker (pid {worker.pid}) died: {why}; the slot starts a new worker "
                    f"(rerun with hydra.sweeper.workers=fresh to see the trial alone)")
        max_trials = int(self.conf.get("worker_max_trials") or 0)
        max_rss = float(self.conf.get("worker_max_rss_mb") or 0)
        rss = worker.rss_mb() if max_rss else 0.0
        if (max_trials and worker.trials >= max_trials) or (max_rss and rss > max_rss):
            log.info("Retiring warm worker %d after %d trials (%.0f MB resident)", worker.pid, worker.trials,
                     rss or worker.rss_mb())
            self.workers.pop(r.slot.index, None)
            worker.close()
        return reason

    def _close_workers(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    def _oom_overrides(self, r: Running) -> Optional[List[str]]:
        values = dict(o.split("=", 1) for o in r.overrides if "=" in o)
        batch = int(float(values.get("batch_size", self.job_cfg.batch_size)))
        accum = int(float(values.get("grad_accum", self.job_cfg.grad_accum)))
        if batch <= 1:
            return None
        return [f"batch_size={batch // 2}", f"grad_accum={accum * 2}"]

    # -- resume ----------------------------------------------------------------
    def _recover_left_behind(self) -> None:
        """RUNNING trials whose sweeper is gone: take a finished result, else retry or fail them.

        A sweeper of this host that is gone (its pid) is known at once. Another host's is known by
        Optuna's heartbeat (RDB storages): a trial whose sweeper has not recorded its heartbeat for
        ``stale_after_s`` seconds is stale. A journal file has no heartbeat table: there the
        sweeper's own heartbeat, kept in the trial's user attributes, stands in.
        """
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

        TrialState = self.optuna.trial.TrialState
        storage = self.study._storage
        heartbeats = isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)
        stale_after = float(self.conf.get("stale_after_s", 60.0))
        now = time.time()
        # Optuna's own query of its heartbeat table, timed by the database server's clock (a private
        # method: optuna.storages.fail_stale_trials would fail the trials first, and a finished trial's
        # attributes can no longer be written, so the reason why would be lost)
        stale_ids = set(storage._get_stale_trial_ids(self.study._study_id)) if heartbeats else set()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            a = t.user_attrs
            host, pid, beat = a.get("sweeper_host"), a.get("sweeper_pid"), a.get("heartbeat")
            start = t.datetime_start.timestamp() if t.datetime_start else now
            why = f"no heartbeat for more than {stale_after:.0f} s (stale_after_s): its host or sweeper died"
            if host == self.host and pid is not None:
                stale = not _alive(int(pid))
                why = "its sweeper's process is gone"
            elif heartbeats:  # (pid None: its sweeper died between asking for it and recording anything)
                stale = t._trial_id in stale_ids or (pid is None and now - start > stale_after)
            else:
                stale = now - float(beat if beat is not None else start) > stale_after
            if not stale:
                log.debug("Trial %d is running under sweeper %s:%s; leaving it", t.number, host, pid)
                continue
            self._recover(t, why)

    def _recover(self, t, why: str = "its sweeper stopped") -> None:
        TrialState = self.optuna.trial.TrialState
        storage = self.study._storage
        trial_dir = Path(t.user_attrs.get(ATTR_TRIAL_DIR, self.sweep_dir / f"trial_{t.number:04d}"))
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        result = read_result(trial_dir, since=started)
        try:
            if result is not None:
                if diverged(result):
                    storage.set_trial_user_attr(t._trial_id, ATTR_FAIL_REASON, f"diverged: {result.get('reason')}")
                    storage.set_trial_user_attr(t._trial_id, "diverged", True)
                    self.study.tell(t.number, state=TrialState.FAIL if self.multi else TrialState.PRUNED)
                    log.info("Trial %d, left RUNNING, had diverged; recorded", t.number)
                elif result.get("pruned") and not self.multi:
                    self.study.tell(t.number, state=TrialState.PRUNED)
                    log.info("Trial %d, left RUNNING, had finished (pruned); recorded", t.number)
                else:
                    values = [float(result[o]) for o in self.objectives]
                    self.study.tell(t.number, values=values)
                    log.info("Trial %d, left RUNNING, had finished; recorded %s", t.number, values)
                return
            retry = bool(self.conf.get("retry_interrupted", True))
            checkpoint = has_checkpoint(trial_dir)
            reason = (f"left RUNNING by a sweep that stopped (pid {t.user_attrs.get('sweeper_pid')} on "
                      f"{t.user_attrs.get('sweeper_host')}): {why}")
            if retry:
                reason += "; retried" + (" from its last checkpoint" if checkpoint else " from the start")
            storage.set_trial_user_attr(t._trial_id, ATTR_FAIL_REASON, reason)
            # the state change is the lock: of several sweepers that found the trial stale, only the one
            # whose tell succeeds retries it
            self.study.tell(t.number, state=TrialState.FAIL)
        except (self.optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as e:
            log.info("Trial %d was recorded by another sweeper meanwhile (%s)", t.number, e)
            return
        log.warning("Trial %d %s", t.number, reason)
        if self.parent:
            self.parent.tag_child(trial_dir, t, "FAIL", reason, end_run=not (retry and checkpoint))
        if retry:
            self._retry(t, trial_dir)

    def _retry(self, t, trial_dir: Path) -> None:
        """Queue a copy of the failed trial ``t`` (Optuna's RetryHeartbeatStaleTrialCallback: same
        parameters, ``retry_history`` in its system attributes), to resume from ``trial_dir``."""
        import copy
        import warnings

        from optuna.storages import RetryHeartbeatStaleTrialCallback

        again = copy.deepcopy(t)
        keep = {k: v for k, v in t.user_attrs.items()
                if k not in (ATTR_FAIL_REASON, "duration_s", "heartbeat", "worker_pid", "worker_trial")}
        again.user_attrs = {**keep, TAG_RETRY_OF: t.number, "resume_dir": str(trial_dir),
                            "extra": [e for e in t.user_attrs.get("extra", []) if not e.startswith("resume=")]}
        with warnings.catch_warnings():  # "experimental" in Optuna
            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback()(self.study, again)

    def _enqueue(self) -> None:
        for i, point in enumerate(self.conf.get("enqueue") or []):
            params = self._active(dict(point), f"hydra.sweeper.enqueue[{i}]")
            if params:
                self.study.enqueue_trial(params, skip_if_exists=True)
        if self.grid:
            enqueue_grid(self.study, self.space)

    def _active(self, point: Dict[str, Any], where: str) -> Dict[str, Any]:
        unknown = [k for k in point if k not in self.space.distributions]
        if unknown:
            log.info("%s: %s not searched in this sweep; ignored", where, ", ".join(unknown))
        values = {**self.base_values, **{k: v for k, v in self.space.fixed.items()}}
        out = {}
        for name in self.space.order():
            if name in point and self.space.active(name, {**values, **out}):
                out[name] = point[name]
        return out

    # -- liveness ----------------------------------------------------------------
    def _heartbeat(self, now: float) -> None:
        for r in self.running.values():
            self._beat(r.trial._trial_id, now)

    def _beat(self, trial_id: int, now: Optional[float] = None) -> None:
        """Record that a trial of this sweeper is alive: Optuna's heartbeat where the storage has one,
        else (journal file) a user attribute."""
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

        storage = self.study._storage
        try:
            if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
                storage.record_heartbeat(trial_id)
            else:
                storage.set_trial_user_attr(trial_id, "heartbeat", now or time.time())
        except Exception as e:  # a storage hiccup must not kill the sweep
            log.debug("heartbeat of trial id %d: %s", trial_id, e)

    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop waiting for the clean-up
            raise KeyboardInterrupt(f"signal {signum}")
        log.warning("Signal %d: stopping the sweep after the current step", signum)
        self._stop_signal = signum

    def _interrupt(self) -> None:
        """The sweeper was interrupted: stop the trials and leave them to be retried by the next run."""
        log.warning("Sweep interrupted: stopping %d running trial(s)", len(self.running))
        for r in self.running.values():
            stop(r.proc)
        TrialState = self.optuna.trial.TrialState
        for r in list(self.running.values()):
            t = self.study._storage.get_trial(r.trial._trial_id)
            if t.state == TrialState.RUNNING:
                self._recover(t, f"the sweeper got signal {self._stop_signal}")
        self.running.clear()
        if self.parent:
            self.parent.finish("KILLED", None, close=not self._others_running())

    # -- the end -----------------------------------------------------------------
    def _summarize(self, stopped: Optional[str]) -> SweepResult:
        summary = build_summary(self.study, self.objectives, self.command, self.entry_args, space=self.space)
        summary_path = self.sweep_dir / "summary.md"
        header = [f"# Sweep {self.study_name}", "", f"storage: `{safe_url(self.storage_url)}`", ""]
        if stopped:
            header += [f"**Stopped early:** {stopped}", ""]
        if self._budget_spent:
            header += [f"Stopped starting trials when the compute budget was spent ({self._budget_text()}).", ""]
        summary_path.write_text("\n".join(header + summary["lines"]) + "\n")
        (self.sweep_dir / "summary.json").write_text(json.dumps(
            {k: v for k, v in summary.items() if k != "lines"} | {"study_name": self.study_name,
                                                                   "storage": safe_url(self.storage_url)}, indent=2))
        log.info("Sweep %s finished\n%s", self.study_name, "\n".join(summary["lines"]))
        if self.parent:
            self.parent.update(self.study, self.multi)
            # sweepers on other hosts still running trials of the study: the last one closes the run
            self.parent.finish("FAILED" if stopped else "FINISHED", summary_path, close=not self._others_running())
        return SweepResult(self.study_name, self.storage_url, self.sweep_dir, summary["counts"],
                           summary["best_trials"], summary["best_values"], summary["rerun"], summary_path,
                           self.parent.run_id if self.parent else None, stopped)

    # -- mlflow --------------------------------------------------------------------
    def _tracking(self) -> bool:
        return bool(self.conf.get("mlflow", True)) and bool(_select(self.job_cfg, "tracking.enabled", True))

    def tracking_uri(self) -> Optional[str]:
        return _select(self.job_cfg, "tracking.uri") or os.environ.get(MLFLOW_URI_ENV)

    def _mlflow_env(self) -> Dict[str, str]:
        env = {}
        if self.parent is not None:
            env[PARENT_ENV] = self.parent.run_id
            if not _select(self.job_cfg, "tracking.uri"):
                env[MLFLOW_URI_ENV] = self.parent.uri
        return env


def slot_memory_bytes(limit_gb: Optional[float], slot: Slot) -> Optional[float]:
    """Memory per device for the fit check: ``memory_limit_gb`` if set, else the smallest of the slot's GPUs
    (nvidia-smi), else None (a CPU slot: no check)."""
    if limit_gb is not None:
        if float(limit_gb) <= 0:
            raise SweepConfigError(f"hydra.sweeper.memory_limit_gb={limit_gb}: must be > 0 (or null)")
        return float(limit_gb) * 2**30
    if not slot.gpus:
        return None
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = {i.strip(): float(m) * 2**20 for i, m in (line.split(",") for line in out.strip().splitlines())}
    sizes = [total[g] for g in slot.gpus if g in total]
    return min(sizes) if sizes else None


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


def enqueue_grid(study, space: SearchSpace) -> int:
    """``sampler: grid``: enqueue every point of the grid (upper bounds of ranges included,
    conditional parameters only where active) that the study has not seen; returns the grid size."""
    points = space.grid_points()
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    return len(points)


# ---------------------------------------------------------------------------
# helpers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _replace(overrides: List[str], extra: Sequence[str]) -> List[str]:
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(extra)


def _n_trials(storage, study_name: str) -> int:
    """Trials the study already has (0 for a new study)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _positive(value: Any, key: str) -> Optional[float]:
    if value is None:
        return None
    if float(value) <= 0:
        raise SweepConfigError(f"hydra.sweeper.{key}={value}: must be > 0 (or null for no budget)")
    return float(value)


def _fingerprint(space: SearchSpace, objectives: Sequence[str]) -> str:
    import hashlib

    blob = json.dumps({"space": space.describe(), "fixed": space.fixed, "objectives": list(objectives)},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _choices(cfg) -> Dict[str, Any]:
    try:
        return dict(cfg.hydra.runtime.choices)
    except Exception:
        return {}


def _select(cfg, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(cfg, key, default=default)
    except Exception:
        return default
    return value


def _plain(conf: Any) -> Dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(conf, DictConfig):
        return OmegaConf.to_container(conf, resolve=True)
    return dict(conf)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

