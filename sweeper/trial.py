"""The trial's side of the sweep: report each evaluation to the study and stop when pruned.

With ``hydra.sweeper.rung_branch`` the value reported at a rung is that of a decay branch
(:mod:`sweeper.rung_branch`).

The sweeper starts every trial with these environment variables; a run started
without them (a plain ``python -m ftrun``) gets no callback and never touches
Optuna.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Mapping, Optional

from ftrun.contract import OPTUNA_OBJECTIVE_ENV as OBJECTIVE_ENV
from ftrun.contract import OPTUNA_PRUNER_ENV as PRUNER_ENV
from ftrun.contract import OPTUNA_STORAGE_ENV as STORAGE_ENV
from ftrun.contract import OPTUNA_STUDY_ENV as STUDY_ENV
from ftrun.contract import OPTUNA_TRIAL_ID_ENV as TRIAL_ID_ENV
from ftrun.contract import OPTUNA_TRIAL_NUMBER_ENV as TRIAL_NUMBER_ENV
from ftrun.contract import ATTR_BRANCH_S, ATTR_BRANCH_STEPS, TAG_PRUNED, TAG_PRUNED_AT_STEP
from ftrun.contract import RUNG_BRANCH_ENV

log = logging.getLogger(__name__)


def trial_env(storage: str, study: str, trial_id: int, number: int, pruner=None,
              objective: Optional[str] = None, rung_branch: Optional[float] = None) -> dict:
    """What the sweeper puts into a trial's environment."""
    env = {STORAGE_ENV: storage, STUDY_ENV: study, TRIAL_ID_ENV: str(trial_id), TRIAL_NUMBER_ENV: str(number)}
    if pruner is not None:
        env[PRUNER_ENV] = json.dumps(pruner)
    if objective:
        env[OBJECTIVE_ENV] = objective
    if rung_branch is not None:
        env[RUNG_BRANCH_ENV] = repr(float(rung_branch))
    return env


def pruning_callback(cfg, env: Optional[Mapping[str, str]] = None):
    """A :class:`PruningCallback` when this run is a sweep trial that may be pruned, else None.

    ``env``: the trial's variables (:func:`trial_env`); None: this process's environment."""
    env = os.environ if env is None else env
    if not env.get(STORAGE_ENV) or PRUNER_ENV not in env:
        return None
    from sweeper.study import pruner_key

    branch = env.get(RUNG_BRANCH_ENV)
    return _callback_class()(env.get(OBJECTIVE_ENV) or cfg.objective, every=cfg.train.eval_examples,
                             rung_branch=float(branch) if branch else None,
                             pausing=pruner_key(json.loads(env[PRUNER_ENV])) == "promotion", env=env)


def mark_pruned(tracker, step: int) -> None:
    """Tag the run's MLflow run pruned=true (no-op without tracking)."""
    mlflow = getattr(tracker, "mlflow", None)
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.set_tags({TAG_PRUNED: "true", TAG_PRUNED_AT_STEP: str(step)})


class PruningCallback:
    """At every evaluation during training, rank 0 reports the objective to the Optuna
    trial and asks the pruner; every rank learns the answer and stops training together.

    With ``rung_branch`` (a share of the steps so far) the value reported is that of a decay branch
    (:mod:`sweeper.rung_branch`), run through ``trainer``, which the run sets before training.

    With ``pausing`` (``hydra.sweeper.pruner=promotion``, :mod:`sweeper.promotion`) the rule's "stop" means
    "pause here": the Trainer saves a checkpoint and stops, and the sweeper resumes the trial from it if the
    trial is promoted later."""

    def __init__(self, objective: str, every: int = 0, rung_branch: Optional[float] = None, pausing: bool = False,
                 env: Optional[Mapping[str, str]] = None):
        self.objective = objective
        self.env = os.environ if env is None else env  # the trial's variables (a packed trial's come in its message)
        self.every = every  # train.eval_examples: report steps are rounded to its multiples
        self.rung_branch = rung_branch
        self.trainer = None  # set by ftrun.fit.train_and_report: a branch trains and evaluates through it
        self.branch_steps = 0
        self.branch_s = 0.0
        self.pruned = False
        self.pruned_at_step: Optional[int] = None
        self.pausing = pausing
        self.paused_at: Optional[int] = None  # examples seen at the rung where the trial paused
        self.paused_at_step: Optional[int] = None
        self._trial = None
        self._earlier_branches = (0, 0.0)  # (steps, seconds) of a resumed trial's earlier segments
        self._training = False

    # -- trainer events ------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False  # the final evaluation after training decides nothing

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training or self.pruned or self.paused_at_step is not None:
            return
        prune, seen = False, examples_seen(args, state, self.every)
        if state.is_world_process_zero:
            prune = self.decide(metrics or {}, state, seen)
        prune = _broadcast_from_rank0(prune)
        if prune:
            if self.stopped(seen, state.global_step) == "paused":  # a checkpoint to resume from when promoted
                control.should_save = True  # (every rank takes part)
            control.should_training_stop = True

    def stopped(self, seen: int, step: int) -> str:
        """Record that the pruner stopped the trial here (``seen`` examples, ``step``): ``"paused"`` under the
        promotion rule (it waits at this rung), else ``"pruned"``. Alone and in a pack alike."""
        if self.pausing:
            self.paused_at, self.paused_at_step = seen, step
            return "paused"
        self.pruned, self.pruned_at_step = True, step
        return "pruned"

    def decide(self, metrics: dict, state, seen: int) -> bool:
        """Report this evaluation's objective to the trial (after ``seen`` training examples) and return whether the
        pruner stops it (or, ``pausing``, pauses it). ``state``: ``global_step`` and ``max_steps``."""
        value = self._value(metrics)
        # the run's last step already ends its own decay; under promotion only a rung's evaluation decides
        if value is not None and self.rung_branch and state.global_step < state.max_steps and self._at_rung(seen):
            value = self._branch_value(state)
        if value is None:
            return False
        try:
            trial = self._get_trial()
            trial.report(value, step=seen)
            if self.branch_steps:  # a promoted trial's earlier segments' branches count too
                steps, secs = self._earlier_branches
                trial.set_user_attr(ATTR_BRANCH_STEPS, steps + self.branch_steps)
                trial.set_user_attr(ATTR_BRANCH_S, round(secs + self.branch_s, 3))
            # a trial at its last step has nothing left to pause for
            prune = trial.should_prune() and not (self.pausing and state.global_step >= state.max_steps)
            log.info("Optuna trial %d: %s=%.4f at step %d (%d examples)%s", trial.number, self.objective,
                     value, state.global_step, seen,
                     (" -> paused at this rung" if self.pausing else " -> pruned") if prune else "")
            return prune
        except Exception as e:  # the study unreachable: keep training (and never leave other ranks waiting)
            log.warning("Optuna: could not report to the study (%s); training goes on", e)
            return False

    # -- helpers ---------------------------------------------------------------
    def _branch_value(self, state) -> Optional[float]:
        """The objective after a decay branch from here; the branch's eval metrics go to MLflow as branch_*."""
        from sweeper.rung_branch import run_branch

        if self.trainer is None:
            raise RuntimeError("PruningCallback.trainer is unset: hydra.sweeper.rung_branch needs the Trainer")
        branch = run_branch(self.trainer, self.rung_branch,
                            loss_only=self.objective in ("eval_loss", "eval_perplexity"))
        self.branch_steps += branch.steps
        self.branch_s += branch.seconds
        value = self._value(branch.metrics)
        log.info("Rung branch at step %d: %d decay steps in %.1f s, %s=%s", state.global_step, branch.steps,
                 branch.seconds, self.objective, "n/a" if value is None else f"{value:.4f}")
        _log_to_mlflow({f"branch_{k}": v for k, v in branch.metrics.items()}, state.global_step)
        return value

    def _at_rung(self, seen: int) -> bool:
        """Whether this evaluation is one the study decides on: every one for a pruner, a rung's for promotion."""
        if not self.pausing:
            return True
        try:
            trial = self._get_trial()
            frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            return trial.study.pruner.at_rung(trial.study, frozen, seen)
        except Exception as e:  # the study unreachable: branch, as at any rung (reporting will warn)
            log.warning("Optuna: could not read the study (%s)", e)
            return True

    def _value(self, metrics: dict) -> Optional[float]:
        if self.objective == "eval_perplexity" and "eval_loss" in metrics:
            value = math.exp(min(metrics["eval_loss"], 50.0))
        else:
            value = metrics.get(self.objective)
        if value is None or not math.isfinite(float(value)):
            return None
        return float(value)

    def _get_trial(self):
        if self._trial is None:
            import optuna

            from sweeper.study import build_pruner, open_storage

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            env = self.env
            study = optuna.load_study(
                study_name=env[STUDY_ENV],
                storage=open_storage(env[STORAGE_ENV]),
                sampler=optuna.samplers.RandomSampler(),  # the trial only reports; the sweeper samples
                pruner=build_pruner(json.loads(env[PRUNER_ENV])),
            )
            self._trial = optuna.trial.Trial(study, int(env[TRIAL_ID_ENV]))
            attrs = self._trial.user_attrs  # a trial resumed after a pause: what its branches cost before
            self._earlier_branches = (int(attrs.get(ATTR_BRANCH_STEPS) or 0), float(attrs.get(ATTR_BRANCH_S) or 0.0))
        return self._trial


def _log_to_mlflow(metrics: dict, step: int) -> None:
    """Into the run's active MLflow run, if it has one (the tracker started it)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None and metrics:
        mlflow.log_metrics(metrics, step=step)


def examples_seen(args, state, every: int = 0) -> int:
    """The step under which an evaluation is reported to the study: training examples seen so far.

    Trials with different batch sizes are then compared after the same data (a pruner compares
    the values that trials reported at the same step). With ``train.eval_examples`` set, the
    count is rounded to its multiple, so evaluations that a batch size puts a few examples off
    still line up.
    """
    seen = state.global_step * args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return max(every, round(seen / every) * every) if every > 0 else seen


_CLASS = None


def _callback_class():
    """PruningCallback as a transformers TrainerCallback (built on first use: the sweeper
    process imports this module and must not import transformers)."""
    global _CLASS
    if _CLASS is None:
        from transformers import TrainerCallback

        _CLASS = type("PruningCallback", (PruningCallback, TrainerCallback), {})
    return _CLASS


def _broadcast_from_rank0(flag: bool) -> bool:
    """Rank 0's decision on every rank (no-op without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
