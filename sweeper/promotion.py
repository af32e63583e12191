"""Pause and promote (``hydra.sweeper.pruner=promotion``): asynchronous successive halving with promotion.

Optuna's pruners can only stop a trial for good. Here a trial that reaches a rung and is not among the best
``1/reduction_factor`` of the trials that reached that rung *pauses*: it saves a checkpoint and leaves its slot,
its Optuna trial still RUNNING with the ``paused_at`` attribute. Whenever a slot frees, the sweeper first asks
:meth:`PromotionPruner.next_promotion` for a paused trial that has since become one of the best at its rung (the
highest rung first) and resumes it from its checkpoint, in the same Optuna trial and MLflow run; only when none
is promotable does a new trial start. This is ASHA's promotion rule (Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning", Algorithm 2) as Syne Tune's ``hyperband_promotion`` runs it. When the sweep
ends, trials still paused can no longer be promoted: they are recorded PRUNED and their checkpoints deleted.

Rungs are counted in training examples seen, the step trials report under (:func:`sweeper.trial.examples_seen`):
``min_resource * reduction_factor**k``. A trial's value at a rung is the first value it reported at or past it,
so trials with different batch sizes compare after the same data. With ``hydra.sweeper.rung_branch`` the value
is a decay branch's evaluation (:mod:`sweeper.rung_branch`), which predicts the end of a warmup-stable-decay run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Union

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from ftrun.contract import ATTR_PAUSED_AT, ATTR_SURPLUS


@dataclass(frozen=True)
class Rungs:
    """Rung ``k`` starts at ``min_resource * reduction_factor**k`` examples seen."""

    min_resource: int
    reduction_factor: int

    def start(self, k: int) -> int:
        """Examples seen at rung ``k``."""
        return self.min_resource * self.reduction_factor ** k

    def of(self, step: int) -> Optional[int]:
        """The highest rung at or below ``step`` examples (None below the first)."""
        if step < self.min_resource:
            return None
        k = 0
        while self.start(k + 1) <= step:
            k += 1
        return k

    def reached(self, trial: FrozenTrial) -> Optional[int]:
        """The rung whose first report at or past it is the trial's last report; None when the last report is
        not such a first one (it falls between rungs)."""
        steps = sorted(trial.intermediate_values)
        k = self.of(steps[-1]) if steps else None
        if k is None:
            return None
        return k if len(steps) == 1 or steps[-2] < self.start(k) else None

    def value_at(self, trial: FrozenTrial, k: int) -> Optional[float]:
        """The trial's first reported value at or past rung ``k``, or None."""
        steps = [s for s in trial.intermediate_values if s >= self.start(k)]
        return trial.intermediate_values[min(steps)] if steps else None

    def top(self, trials: Iterable[FrozenTrial], k: int, direction) -> List[int]:
        """The numbers of the best ``n // reduction_factor`` of the ``n`` trials that reached rung ``k``, best
        first (ties: the earlier trial)."""
        sign = -1.0 if _maximize(direction) else 1.0
        ranked = sorted((sign * float(v), t.number) for t in trials if _counted(t)
                        for v in [self.value_at(t, k)] if v is not None)
        return [number for _, number in ranked[:len(ranked) // self.reduction_factor]]


class PromotionPruner(BasePruner):
    """The rule; its :meth:`prune` answers a trial at a rung "pause here" (True) or "go on" (False).

    Args:
        min_resource: examples seen at the first rung; ``auto`` (the default): the fewest examples any trial of
            the study reported at (its first evaluation).
        reduction_factor: a rung promotes the best ``1/reduction_factor`` of the trials that reached it.
        teach_sampler: while fewer than this many trials are complete, the sampler learns from the trials at the
            highest rung this many trials reached, with their value there (:mod:`sweeper.rung_view`); 0: it
            learns only from finished trials, as Optuna's samplers do.
    """

    def __init__(self, min_resource: Union[int, str] = "auto", reduction_factor: int = 3, teach_sampler: int = 4):
        if min_resource != "auto" and (isinstance(min_resource, bool) or not isinstance(min_resource, int)
                                       or min_resource < 1):
            raise ValueError(f"min_resource={min_resource!r}: give training examples (an integer >= 1) or auto")
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 2:
            raise ValueError(f"reduction_factor={reduction_factor!r}: must be an integer >= 2")
        if isinstance(teach_sampler, bool) or not isinstance(teach_sampler, int) or teach_sampler < 0:
            raise ValueError(f"teach_sampler={teach_sampler!r}: give a number of trials (an integer >= 0; 0 = off)")
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.teach_sampler = teach_sampler

    def taught(self, sampler):
        """``sampler`` learning from paused trials' rung values (:class:`sweeper.rung_view.RungSampler`; not with
        ``teach_sampler=0``) and asked again rather than proposing a paused trial's configuration."""
        from sweeper.rung_view import RungSampler

        return RungSampler(sampler, self.rungs, self.teach_sampler)

    def rungs(self, trials: Sequence[FrozenTrial]) -> Optional[Rungs]:
        """The study's rungs (None while no trial has reported, with ``min_resource: auto``)."""
        if self.min_resource != "auto":
            return Rungs(int(self.min_resource), self.reduction_factor)
        first = first_evaluation(trials)
        return Rungs(first, self.reduction_factor) if first is not None else None

    def at_rung(self, study, trial: FrozenTrial, step: int) -> bool:
        """Whether a report at ``step`` examples would be the trial's first at or past a rung (where a rung decay
        branch is worth its cost: other evaluations decide nothing)."""
        rungs = self.rungs(study.get_trials(deepcopy=False))
        if rungs is None:  # the study's first report: it sets the first rung (min_resource: auto)
            return True
        k = rungs.of(step)
        earlier = [s for s in trial.intermediate_values if s < step]
        return k is not None and (not earlier or max(earlier) < rungs.start(k))

    # -- the trial's question, at each evaluation -----------------------------------
    def prune(self, study: "optuna.study.Study", trial: FrozenTrial) -> bool:
        """True: pause at this rung (not among its best yet); False: go on (no rung here, or promoted at once)."""
        trials = study.get_trials(deepcopy=False)
        rungs = self.rungs(trials)
        k = rungs.reached(trial) if rungs else None
        if k is None:
            return False
        return trial.number not in rungs.top(trials, k, study.direction)

    # -- the sweeper's question, when a slot frees ------------------------------------
    def next_promotion(self, study, exclude: Iterable[int] = ()) -> Optional[FrozenTrial]:
        """The paused trial to resume next, or None: the best promotable one at the highest rung."""
        trials = study.get_trials(deepcopy=False)
        rungs = self.rungs(trials)
        if rungs is None:
            return None
        exclude = set(exclude)
        waiting = {}  # rung -> {number: trial}
        for t in paused_trials(trials):
            if t.number not in exclude:
                waiting.setdefault(rungs.of(int(t.user_attrs[ATTR_PAUSED_AT])), {})[t.number] = t
        for k in sorted((k for k in waiting if k is not None), reverse=True):
            for number in rungs.top(trials, k, study.direction):
                if number in waiting[k]:
                    return waiting[k][number]
        return None


def first_evaluation(trials: Iterable[FrozenTrial]) -> Optional[int]:
    """The fewest examples any of ``trials`` reported at (the study's first evaluation), or None before any report.
    The first rung of ``min_resource: auto`` here and of ``first_evaluation`` in :mod:`sweeper.halving`."""
    first = [min(t.intermediate_values) for t in trials if t.intermediate_values]
    return int(min(first)) if first else None


def last_resort(study) -> Optional[FrozenTrial]:
    """At a sweep's end (no trial running, none to start) with no trial trained to the end: the paused trial
    at the highest rung with the best value there, so that the sweep finishes at least one trial (a rung of
    fewer than ``reduction_factor`` trials promotes none). None when a trial is complete or none is paused."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    paused = paused_trials(trials)
    if not paused:
        return None
    sign = -1.0 if _maximize(study.direction) else 1.0

    def key(t: FrozenTrial):
        at = int(t.user_attrs[ATTR_PAUSED_AT])  # the step it reported its rung's value under
        return (-at, sign * float(t.intermediate_values.get(at, sign * float("inf"))), t.number)

    return min(paused, key=key)


def paused_trials(trials: Iterable[FrozenTrial]) -> List[FrozenTrial]:
    """RUNNING trials that wait at a rung (their process has ended; a checkpoint holds their state)."""
    from sweeper.compute import trial_kind  # the one rule for "paused"

    return [t for t in trials if trial_kind(t) == "paused"]


def _counted(t: FrozenTrial) -> bool:
    return "duplicate_of" not in t.user_attrs and ATTR_SURPLUS not in t.user_attrs


def _maximize(direction) -> bool:
    return getattr(direction, "name", str(direction)).lower().endswith("maximize")
