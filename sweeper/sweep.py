"""The sweep: an Optuna study driven by ask-and-tell, each trial run by its slot's warm worker or a fresh process.

:func:`run_sweep` is what ``python -m ftrun -m ...`` ends up in (through the thin Hydra plugin in
``hydra_plugins/ftrun_sweeper``). :meth:`Sweep.run` reads top to bottom:

1. open (or resume) the study in persistent storage, ``<hydra.sweep.dir>/<study_name>/study.db``
   unless ``hydra.sweeper.storage`` names another (:func:`sweeper.study.open_study`), and the
   sweep's MLflow parent run (:mod:`sweeper.parent`; trials are its nested children);
2. record the trials a killed sweep left RUNNING (:mod:`sweeper.stale_trials`): at once when that
   sweep ran on this host, else once their heartbeat is older than ``stale_after_s`` (sweepers on
   other hosts may share the study: see "From one machine to a cluster" in the README); this is
   checked throughout the sweep, not only at its start;
3. enqueue the configured first trials (and every grid point for ``sampler: grid``);
4. keep ``n_jobs`` slots busy: whenever a trial ends, its outcome (:func:`sweeper.outcome.classify`)
   is told to the study and the next trial starts in that slot at once, until the study has
   ``n_trials`` (:mod:`sweeper.quota`), a budget is spent (:mod:`sweeper.budget`), too many trials
   failed, or a signal asks to stop (:mod:`sweeper.signals`);
5. write the summary (:mod:`sweeper.summary`) with the best trial and the command that reruns it.

A trial is ``python -m ftrun <fixed overrides> <sampled overrides> hydra.run.dir=<sweep dir>/trial_NNNN``,
run by the slot's warm worker (:mod:`sweeper.worker_pool`), or as a fresh process with
``hydra.sweeper.workers=fresh``, a custom ``command`` or several processes per trial. Its objective
comes from ``<trial dir>/result.json``; it reports intermediate values and obeys the pruner itself
(:mod:`sweeper.trial`).
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ftrun.contract import ATTR_FAIL_REASON, ATTR_OOM_RETRY, ATTR_OVERRIDES
from ftrun.contract import ATTR_PACKED_WITH, ATTR_PRUNED, ATTR_TRIAL_DIR, TRIAL_LOG
from ftrun.contract import MLFLOW_PARENT_RUN_ENV, MLFLOW_URI_ENV
from sweeper import stale_trials
from sweeper.budget import Budget
from sweeper.compute import compute_account
from sweeper.outcome import Outcome, classify, diverged, has_checkpoint, is_oom, log_tail, read_result
from sweeper.pack import pack_reason, pack_size
from sweeper.parent import ParentRun
from sweeper.pack_launch import PackLaunching
from sweeper.pausing import PAUSED, PauseAndPromote, earlier_seconds
from sweeper.quota import TrialQuota
from sweeper.setting_checks import check_rung_branch, check_shared_run
from sweeper.settings import Settings, plain, read_settings, select as cfg_select
from sweeper.signals import StopSignals
from sweeper.slot_memory import too_big
from sweeper.slots import Slot, make_slots, popen, stop, trial_command
from sweeper.space import sweep_space, to_override
from sweeper.study import SweepConfigError, enqueue_first, open_study, pruner_key, safe_url, sampler_name
from sweeper.summary import write_summary
from sweeper.live import SweepView, rows_from_study
from sweeper.trial import trial_env
from sweeper.worker import WarmTrial
from sweeper.worker_pool import WorkerPool, worker_env

log = logging.getLogger("ftrun.sweeper")


class SweepError(RuntimeError):
    """The sweep stopped early (too many failed trials, or a signal); the summary says which."""


@dataclass
class Running:
    """A trial this sweeper has started and not yet recorded."""

    trial: Any  # optuna.trial.Trial
    slot: Slot
    proc: Any  # subprocess.Popen, or a WarmTrial with the same face
    trial_dir: Path
    overrides: List[str]
    extra: List[str]
    started: float
    oom_retried: bool = False

    def seconds(self) -> float:
        """Its trial-seconds in this run of the sweep: its wall time, or in a pack its share of the pack's
        (:meth:`sweeper.pack.Pack.seconds`)."""
        in_pack = getattr(self.proc, "seconds", None)
        return in_pack() if in_pack is not None else time.time() - self.started

    @property
    def packed(self) -> bool:
        return hasattr(self.proc, "pack")


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


def run_sweep(conf: Mapping[str, Any], arguments: Sequence[str], job_cfg: Union[Any, Callable[[List[str]], Any]],
              sweep_root: Path, entry_args: Sequence[str] = ()) -> SweepResult:
    """Run (or resume) the sweep described by ``conf`` (``hydra.sweeper``).

    ``arguments``: the command-line task overrides (sweeps and fixed values);
    ``job_cfg``: the composed config with the fixed overrides applied (for the objective, tracking
    settings and the values conditions refer to), or a function that composes it from the fixed
    overrides (the Hydra plugin passes its config loader);
    ``entry_args``: extra arguments for every trial command (``--config-name`` ...).
    """
    conf = plain(conf)
    space = sweep_space(conf, arguments)
    composed = callable(job_cfg)
    if composed:
        from ftrun.config import canonical_overrides

        job_cfg = job_cfg(canonical_overrides([f"{k}={v}" for k, v in space.fixed.items()]))  # lr= -> optimizer.lr=
    if conf.get("auto"):  # sweep=auto: the priors for this method and model size
        from sweeper.auto import auto_params, count_parameters

        prior, why = auto_params(conf["auto"], str(cfg_select(job_cfg, "method.name")),
                                 count_parameters(cfg_select(job_cfg, "model")))
        log.info("%s: %s", why, ", ".join(f"{k}={v}" for k, v in prior.items()))
        space = sweep_space(conf, arguments, prior)
    if not space.distributions:
        raise SweepConfigError("the sweep has no search space: give sweeps such as 'lr=tag(log,interval(1e-5,1e-1))' "
                               "on the command line, in hydra.sweeper.params, or pick a preset (sweep=lora_search)")
    if composed:  # a composed run config: what every trial would be refused for, before any study opens
        check_shared_run(job_cfg, list(space.distributions))
    check_rung_branch(conf, job_cfg, list(space.distributions))
    return Sweep(read_settings(conf, space, job_cfg, Path(sweep_root), entry_args)).run()


class Sweep(PauseAndPromote, PackLaunching):
    """One run of a sweep: its study, slots, running trials, workers, budget and MLflow parent run."""

    def __init__(self, s: Settings):
        self.s = s
        self.study = None
        self.quota: Optional[TrialQuota] = None
        self.founder = False  # whether this sweeper created the study (and so its MLflow parent run)
        self.parent: Optional[ParentRun] = None
        self.failures = 0
        self._repeats = 0  # configurations proposed again and answered from the study, this run
        self.running: Dict[int, Running] = {}  # trial number -> the trial (a slot runs one, or a pack of them)
        self.pending: List[tuple] = []  # trials asked for a pack that could not join it: the next free slot's
        self._composed: Dict[int, Any] = {}  # trial number -> its composed config (sweeper.pack.gather)
        self.pool = WorkerPool(s.conf, s.sweep_dir / "workers",
                               env=worker_env(s.job_cfg, list(s.space.distributions), s.pruner_spec))
        self.budget = Budget(s.budget_trial_s, s.budget_wall_s)
        self.signals = StopSignals()

    def open(self) -> None:
        """Open the study and its trial quota."""
        self.study, self.founder = open_study(self.s)
        self.quota = TrialQuota(self.study, self.s.n_trials, self.s.grid)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> SweepResult:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.s
        self.open()
        prior = self.quota.counts()
        log.info("Study %s (%s, %s) in %s: %d of %d trials done; search space: %s",
                 s.study_name, sampler_name(s.conf.get("sampler", "tpe")), pruner_key(s.pruner_spec),
                 safe_url(s.storage_url), prior["COMPLETE"] + prior["PRUNED"], s.n_trials,
                 ", ".join(f"{k}={v}" for k, v in s.space.describe().items()))
        self.parent = ParentRun.open(s, self.study, self.founder) if s.tracking() else None
        self._recover_left_behind()
        enqueue_first(self.study, s)
        self.view = SweepView(s.study_name, s.n_trials, s.objectives[0], s.directions[0],  # sweeper.live
                              s.budget_trial_s, s.budget_wall_s, ["python", "-m", "ftrun", *s.entry_args])
        self.view.start(rows_from_study(self.study))
        free = make_slots(int(s.conf.get("n_jobs", 1)), s.conf.get("gpus_per_trial"), s.conf.get("devices"))
        for slot in free:
            log.info("Sweep %s", slot.describe())
        with self.signals:
            try:
                stopped = self._keep_slots_busy(free)
            finally:
                self.view.close()
                self.pool.close()
        result = self._summarize(stopped)
        if stopped is not None:
            raise SweepError(f"{stopped}; see {result.summary_path}")
        return result

    def _keep_slots_busy(self, free: List[Slot]) -> Optional[str]:
        """Start trials in free slots and record the ones that end, until no more are wanted; returns why
        the sweep stopped early, or None."""
        stopped: Optional[str] = None
        last_beat = 0.0
        self.budget.start()
        while True:
            if self.signals.signum is not None:
                self._interrupt()
                raise SweepError(f"interrupted by signal {self.signals.signum}; rerun the same command to "
                                 "resume (the running trials will be retried)")
            left_packs = {}  # slot index -> (slot, pack): packs a member left, still training
            for r in list(self.running.values()):
                if r.proc.poll() is not None and self._finish(r):
                    if not self._busy(r.slot):
                        free.append(r.slot)
                        free.sort(key=lambda slot: slot.index)
                    elif r.packed:
                        left_packs[r.slot.index] = (r.slot, r.proc.pack)
            stopped = self._check_limits(stopped)
            for slot, pack in left_packs.values():
                if stopped is None and not self.budget.spent:
                    self._join(slot, pack, max(0, self.quota.need()))
            while free and stopped is None and not self.budget.spent and self._promote(free[0]):
                free.pop(0)
            while self.pending and free and stopped is None and not self.budget.spent:
                if self._launch_some(free[0], max(0, self.quota.need())):  # trials that could not join a pack
                    free.pop(0)
            need = self.quota.need() if stopped is None and not self.budget.spent else 0
            while need > 0 and free:
                started = self._launch_some(free[0], need)
                if started:
                    free.pop(0)
                    need -= started
                else:  # a configuration already trained, or one that cannot fit: ask again
                    need = self.quota.need()
            now = time.time()
            beat_due = now - last_beat >= self.s.heartbeat_s
            # with nothing trained to the end, the best paused trial finishes even on a spent budget: a budget
            # stops new trials, not the ones started (else the sweep would end with no result and delete them)
            if not self.running and free and stopped is None and need <= 0 \
                    and self._promote(free[0], last_resort=True):
                free.pop(0)
                continue
            if not self.running:
                self._drop_pending("the sweep stopped starting trials before a slot was free for it")
                if stopped is not None or self.budget.spent or not self._others_running():
                    if not self._others_running():  # nothing can promote the paused trials any more
                        self._close_paused()
                    return stopped
                # RUNNING trials that are not ours: another sweeper's, or one a killed sweeper asked for
                # before it could record itself; wait, and fail (and retry) them once they are stale
                if beat_due:
                    self._recover_left_behind()
                    last_beat = now
                self._wait(1.0)
                continue
            if beat_due:
                for t in [r.trial for r in self.running.values()] + [p[0] for p in self.pending]:
                    stale_trials.beat(self.study, t, now)
                if self.s.shared:  # another host's trials may have been left behind meanwhile
                    self._recover_left_behind()
                last_beat = now
            self._wait(0.2)

    def _check_limits(self, stopped: Optional[str]) -> Optional[str]:
        """Stop starting trials after too many failures, or once the budget is spent."""
        if stopped is None and self.failures > self.s.max_failures:
            stopped = (f"{self.failures} failed trials (more than max_failures={self.s.max_failures}); "
                       "no new trials started")
            log.error("Sweep: %s", stopped)
        if stopped is None and not self.budget.spent and self.budget.left(self.trial_seconds) <= 0:
            self.budget.spent = True
            log.info("Sweep: the compute budget is spent (%s); no new trials start",
                     self.budget.text(self.trial_seconds))
        return stopped

    def _wait(self, timeout: float) -> None:
        """Sleep until a warm trial replies or ``timeout`` passes (fresh trials are polled)."""
        replies = [r.proc.worker.reply_file for r in self.running.values()
                   if isinstance(r.proc, WarmTrial) and not r.proc.worker.reply_file.closed]
        if replies:
            select.select(replies, [], [], timeout)
        else:
            time.sleep(timeout)

    def trial_seconds(self) -> float:
        """Compute spent on this study (its compute account, all runs of the sweep) plus the running trials'."""
        done = compute_account(self.study.get_trials(deepcopy=False)).used_s
        return done + sum(r.seconds() for r in self.running.values())

    def _others_running(self) -> bool:
        return self.quota.others_running({r.trial.number for r in self.running.values()}
                                         | {p[0].number for p in self.pending})

    def _busy(self, slot: Slot) -> bool:
        """Whether a trial still runs in ``slot`` (the other members of a pack)."""
        return any(r.slot.index == slot.index for r in self.running.values())

    # -- one trial ---------------------------------------------------------------
    def _launch_some(self, slot: Slot, want: int) -> int:
        """Start trials in the free ``slot``: a pack of up to ``hydra.sweeper.pack`` (at most ``want`` new ones) where
        packing can run, else one trial (a waiting one first); how many started."""
        if pack_size(self.s.conf) > 1 and pack_reason(self.s.conf, self.pool.warm(slot)) is None:
            return self._launch_pack(slot, pack_size(self.s.conf), want)
        return int(self._launch(slot, picked=self.pending.pop(0) if self.pending else None))

    def _drop_pending(self, why: str) -> None:
        """Trials asked for a pack that will never get a slot: told FAIL as not run, their configuration put back
        into the queue (a resumed sweep runs them)."""
        from sweeper.quota import not_run

        while self.pending:
            not_run(self.study, self.pending.pop(0)[0], why)

    def _trial_args(self, trial, params: Dict[str, Any], extra: Sequence[str], trial_dir: Path) -> List[str]:
        """The trial's command-line arguments (``python -m ftrun <these>``)."""
        overrides = [f"{k}={v}" for k, v in self.s.space.fixed.items()] + [to_override(k, v) for k, v in params.items()]
        return [*self.s.entry_args, *_replace(overrides, extra), f"hydra.run.dir={trial_dir}"]

    def _launch(self, slot: Slot, trial=None, extra: Sequence[str] = (), trial_dir: Optional[Path] = None,
                oom_retried: bool = False, promoted: bool = False, picked=None) -> bool:
        """Start a trial in ``slot``: a new one from the study (or ``picked``, one asked already), or ``trial`` again
        (an OOM retry, or a paused trial promoted). False when none started (a configuration already trained or
        training, none wanted, or one too big for the slot)."""
        if trial is None:
            picked = picked or self._next_trial()
            if picked is None:
                return False
            trial, params, extra, trial_dir = picked
        else:
            params = dict(trial.params)
        args = self._trial_args(trial, params, extra, trial_dir)
        if not (oom_retried or promoted) and self._too_big(trial, slot, args):
            return False
        overrides, env, cmd = self._prepare(slot, trial, params, extra, trial_dir, args)
        warm = self.pool.warm(slot)
        proc = None
        if warm:
            worker = self.pool.get(slot)
            proc = WarmTrial(worker, {"args": args, "env": env, "log": str(trial_dir / TRIAL_LOG)})
        self._start(slot, trial, trial_dir, overrides, extra, args, env, cmd, warm, proc=proc,
                    oom_retried=oom_retried, promoted=promoted)
        return True

    def _prepare(self, slot: Slot, trial, params, extra, trial_dir: Path, args: List[str]):
        """(overrides, environment, command) of a trial about to start; its user attributes recorded."""
        s = self.s
        overrides = _replace([f"{k}={v}" for k, v in s.space.fixed.items()]
                             + [to_override(k, v) for k, v in params.items()], extra)
        trial_dir.mkdir(parents=True, exist_ok=True)
        cmd = trial_command(s.command, args, processes=slot.processes, launcher=s.conf.get("launcher", "accelerate"))
        env = trial_env(s.storage_url, s.study_name, stale_trials.trial_id(trial), trial.number,
                        pruner=None if pruner_key(s.pruner_spec) == "none" else s.pruner_spec,
                        objective=s.objectives[0], rung_branch=s.rung_branch)
        env.update(self._mlflow_env())
        for key, value in {ATTR_TRIAL_DIR: str(trial_dir), ATTR_OVERRIDES: overrides, "extra": list(extra),
                           "sweeper_host": s.host, "sweeper_pid": os.getpid(),
                           "slot": slot.index, "devices": ",".join(slot.gpus) or "cpu"}.items():
            trial.set_user_attr(key, value)
        return overrides, env, cmd

    def _start(self, slot: Slot, trial, trial_dir: Path, overrides, extra, args, env, cmd, warm: bool, proc=None,
               oom_retried: bool = False, promoted: bool = False, share: float = 1.0) -> None:
        """Record the trial as running in ``slot``: by ``proc`` (a warm or packed trial), else a fresh process."""
        with open(trial_dir / TRIAL_LOG, "ab") as f:
            f.write(f"\n$ {shlex.join(cmd)}{'   # in a warm worker' if warm else ''}\n".encode())
        now = time.time()  # the trial's time starts when it is handed to its process
        if proc is None:
            proc = popen(cmd, slot, env, trial_dir / TRIAL_LOG)
        else:
            trial.set_user_attr("worker_pid", proc.worker.pid)
            trial.set_user_attr("worker_trial", proc.worker.trials)  # 1: the worker's first, which pays its start
        log.info("Trial %d started (%s%s): %s", trial.number, slot.describe(),
                 ", packed" if share < 1 else ", warm worker" if warm else "", " ".join(overrides))
        self.running[trial.number] = Running(trial, slot, proc, trial_dir, overrides, list(extra), now, oom_retried)
        if not promoted:
            self.view.trial_started(trial.number, trial.params, overrides, share)

    def _next_trial(self):
        """(trial, params, extra overrides, trial dir) of a new trial to run, or None when the study wants
        none now or proposed a configuration already trained or training (recorded as a repeat)."""
        trial = self.quota.ask()
        if trial is None:
            return None
        params = self.s.space.sample(trial, self.s.base_values)
        busy = next((t for t in [r.trial for r in self.running.values()] + [p[0] for p in self.pending]
                     if t.params == params), None)
        if busy is None:  # a paused trial holds its configuration too (hydra.sweeper.pruner=promotion)
            from sweeper.promotion import paused_trials

            busy = next((t for t in paused_trials(self.study.get_trials(deepcopy=False)) if t.params == params), None)
        repeat = self.quota.answer_repeat(trial, params, busy, self._repeats)
        if repeat is not None:
            self._repeats += 1
            log.info("Trial %d: %s", trial.number, repeat)
            return None
        extra = list(trial.user_attrs.get("extra", []))
        resume_dir = trial.user_attrs.get("resume_dir")
        trial_dir = self.s.sweep_dir / f"trial_{trial.number:04d}"
        if resume_dir and has_checkpoint(Path(resume_dir)):
            trial_dir = Path(resume_dir)  # continue the interrupted trial from its last checkpoint
            extra = [e for e in extra if not e.startswith("resume=")] + ["resume=auto"]
        return trial, params, extra, trial_dir

    def _too_big(self, trial, slot: Slot, args: List[str]) -> bool:
        """Record the trial as pruned, without running it, when the memory estimate says it cannot fit."""
        import optuna

        reason = too_big(args, slot, self.s.conf.get("memory_limit_gb"), f"Trial {trial.number}")
        if reason is None:
            return False
        trial.set_user_attr(ATTR_FAIL_REASON, f"skipped before launch: {reason}"[:1000])
        trial.set_user_attr(ATTR_PRUNED, True)
        trial.set_user_attr("memory_skipped", True)
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.info("Trial %d pruned before launch (%s): %s", trial.number, slot.describe(), reason)
        self.view.trial_finished(trial.number, "PRUNED", None, 0.0, "skipped: too big for the slot")
        return True

    def _finish(self, r: Running) -> bool:
        """Tell the study how the trial ended; False when it was relaunched in the same slot."""
        import optuna

        del self.running[r.trial.number]
        rc = r.proc.returncode
        result = read_result(r.trial_dir, since=r.started)
        tail = log_tail(r.trial_dir / TRIAL_LOG)
        if not (rc == 0 and result is not None) and not diverged(result) and is_oom(tail) and not r.packed \
                and self._retry_oom(r):
            return False
        if rc == 0 and result is not None and result.get("status") == PAUSED:
            if isinstance(r.proc, WarmTrial):
                self.pool.after_trial(r.slot, r.proc, None)
            self._pause(r, result)
            return True
        out = classify(result, self.s.objectives, self.s.multi, rc, tail)
        if isinstance(r.proc, WarmTrial):
            out.reason = self.pool.after_trial(r.slot, r.proc, out.reason)
        duration = r.seconds() + earlier_seconds(r.trial)
        if r.packed and r.proc.info.get(ATTR_PACKED_WITH):  # the pack it trained in, as the worker saw it
            r.trial.set_user_attr(ATTR_PACKED_WITH, r.proc.info[ATTR_PACKED_WITH])
        for key, value in {**out.attrs(), "duration_s": duration}.items():
            r.trial.set_user_attr(key, value)
        try:
            self.study.tell(r.trial, values=out.values, state=getattr(optuna.trial.TrialState, out.state))
        except optuna.exceptions.UpdateFinishedTrialError:
            # another sweeper found its heartbeat stale (this host stalled longer than stale_after_s)
            # and failed and retried it; its result stays in the trial's directory
            log.warning("Trial %d finished (%s) after another sweeper had failed it as stale; it was retried",
                        r.trial.number, out.state)
            return True
        self._log_outcome(r.trial.number, out, duration)
        self.view.trial_finished(r.trial.number, out.state, out.values[0] if out.values else None, duration,
                                 out.reason)
        if self.parent:
            self.parent.tag_child(r.trial_dir, r.trial, out.state, out.reason, overrides=r.overrides,
                                  oom_retry=r.oom_retried)
            self.parent.update(self.study, self.s.multi)
        return True

    def _log_outcome(self, number: int, out: Outcome, duration: float) -> None:
        if out.state == "FAIL":
            self.failures += 1
            log.warning("Trial %d FAILED after %.0f s: %s", number, duration, out.reason)
        elif out.state == "PRUNED":
            log.info("Trial %d PRUNED after %.0f s%s", number, duration, f" ({out.reason})" if out.reason else "")
        else:
            log.info("Trial %d done in %.0f s: %s", number, duration,
                     ", ".join(f"{o}={v:.4g}" for o, v in zip(self.s.objectives, out.values)))

    def _retry_oom(self, r: Running) -> bool:
        """Relaunch an out-of-memory trial once, in its slot, with half the batch and twice the accumulation."""
        if not self.s.conf.get("oom_retry", True) or r.oom_retried:
            return False
        values = dict(o.split("=", 1) for o in r.overrides if "=" in o)
        batch = int(float(values.get("batch_size", self.s.job_cfg.batch_size)))
        accum = int(float(values.get("grad_accum", self.s.job_cfg.grad_accum)))
        if batch <= 1:
            return False
        retry = [f"batch_size={batch // 2}", f"grad_accum={accum * 2}"]
        log.warning("Trial %d ran out of memory; retrying once with %s", r.trial.number, " ".join(retry))
        r.trial.set_user_attr(ATTR_OOM_RETRY, " ".join(retry))
        if self.parent:
            self.parent.tag_child(r.trial_dir, r.trial, "FAIL", "out of memory (retried)")
        self._launch(r.slot, trial=r.trial, extra=[*r.extra, *retry],
                     trial_dir=r.trial_dir.with_name(r.trial_dir.name + "_oom_retry"), oom_retried=True)
        return True

    # -- trials left behind, and this sweeper stopped --------------------------------
    def _recover_left_behind(self) -> None:
        """Record the RUNNING trials whose sweeper is gone (:mod:`sweeper.stale_trials`)."""
        for t, why in stale_trials.left_behind(self.study, self.s.host, self.s.stale_after_s):
            stale_trials.recover(self.study, t, why, self.s, self.parent)

    def _interrupt(self) -> None:
        """The sweeper was interrupted: stop the trials and leave them to be retried by the next run."""
        log.warning("Sweep interrupted: stopping %d running trial(s)", len(self.running))
        self._drop_pending(f"the sweeper got signal {self.signals.signum} before a slot was free for it")
        for r in self.running.values():
            stop(r.proc)
        for r in list(self.running.values()):
            t = stale_trials.stored_trial(self.study, r.trial)
            if t.state.name == "RUNNING":
                stale_trials.recover(self.study, t, f"the sweeper got signal {self.signals.signum}", self.s,
                                     self.parent)
        self.running.clear()
        if self.parent:
            self.parent.finish("KILLED", None, close=not self._others_running())

    # -- the end -----------------------------------------------------------------
    def _summarize(self, stopped: Optional[str]) -> SweepResult:
        s = self.s
        budget_note = self.budget.text(self.trial_seconds) if self.budget.spent else None
        summary = write_summary(self.study, s, stopped, budget_note)
        log.info("Sweep %s finished\n%s", s.study_name, "\n".join(summary["lines"]))
        if self.parent:
            self.parent.update(self.study, s.multi)
            # sweepers on other hosts still running trials of the study: the last one closes the run
            self.parent.finish("FAILED" if stopped else "FINISHED", summary["path"], close=not self._others_running())
        return SweepResult(s.study_name, s.storage_url, s.sweep_dir, summary["counts"], summary["best_trials"],
                           summary["best_values"], summary["rerun"], summary["path"],
                           self.parent.run_id if self.parent else None, stopped)

    def _mlflow_env(self) -> Dict[str, str]:
        """A trial's MLflow variables: its run becomes a child of the sweep's, in the same store."""
        env = {}
        if self.parent is not None:
            env[MLFLOW_PARENT_RUN_ENV] = self.parent.run_id
            if not cfg_select(self.s.job_cfg, "tracking.uri"):
                env[MLFLOW_URI_ENV] = self.parent.uri
        return env


def _replace(overrides: List[str], extra: Sequence[str]) -> List[str]:
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(extra)
