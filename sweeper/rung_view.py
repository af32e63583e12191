"""What the sampler learns from under pause and promote (``hydra.sweeper.pruner=promotion``).

Optuna's samplers learn from COMPLETE trials (TPE also from PRUNED ones). A paused trial stays RUNNING, so under
pause and promote, where most trials wait at a low rung, TPE and GP see the few trials that finished and propose
as random sampling would. :class:`RungSampler` hands its sampler a view of the study in which, while fewer than
``min_trials`` trials are complete, the trials that reached the highest rung at least ``min_trials`` trials
reached count as COMPLETE with their value there, and other trials with reports as PRUNED. This is BOHB's rule
(Falkner et al. 2018, "BOHB: Robust and Efficient Hyperparameter Optimization at Scale": model the largest budget
with enough observations). With ``hydra.sweeper.rung_branch`` a rung's value is a decay branch's evaluation,
which ranks configurations as their ends do (bench/results/wsd_rungs.md). The study itself is not changed: the
view exists only while the sampler proposes.

A paused trial also holds its configuration: the sweeper must not train it twice at once. In a small grid of
choices TPE keeps proposing the paused configurations it rates best, and each such proposal used to become a FAIL
trial ("asking again"), up to 95 in one sweep=auto study of the benchmark. :class:`RungSampler` asks its sampler
again itself (up to :data:`REDRAWS` times) while the proposal is the configuration of a trial still RUNNING (paused,
training or queued), so those repeats never reach the study.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

REDRAWS = 32  # proposals asked of the sampler before a repeat of a waiting configuration is left to the sweeper


def rung_view(trials: Sequence[FrozenTrial], rungs, min_trials: int) -> List[FrozenTrial]:
    """``trials`` as the sampler should read them (copies where they change; ``rungs``: a
    :class:`sweeper.promotion.Rungs` or None before the first report)."""
    if rungs is None or sum(t.state == TrialState.COMPLETE for t in trials) >= min_trials:
        return list(trials)
    levels: Dict[int, List[int]] = {}  # rung -> numbers of the trials with a value there
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED) and t.intermediate_values:
            k = 0
            while rungs.start(k) <= max(t.intermediate_values):  # it has a report at or past rung k
                levels.setdefault(k, []).append(t.number)
                k += 1
    enough = [k for k, numbers in levels.items() if len(numbers) >= min_trials]
    if not enough:
        return list(trials)
    top = max(enough)
    reached = set(levels[top])
    view = []
    for t in trials:
        if t.number in reached:
            seen = copy.copy(t)
            seen.state, seen.values = TrialState.COMPLETE, [rungs.value_at(t, top)]
            view.append(seen)
        elif t.state == TrialState.RUNNING and t.intermediate_values:
            seen = copy.copy(t)
            seen.state = TrialState.PRUNED  # stopped below the modelled rung: TPE ranks it among the worse
            view.append(seen)
        else:
            view.append(t)
    return view


class _StudyView:
    """The study with :func:`rung_view` in place of its trials; everything else is the study's own."""

    def __init__(self, study, rungs_of: Callable, min_trials: int):
        self._study, self._rungs_of, self._min = study, rungs_of, min_trials

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None):
        return self._get_trials(deepcopy, states)

    def _get_trials(self, deepcopy: bool = False, states=None, use_cache: bool = False):
        trials = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        view = rung_view(trials, self._rungs_of(trials), self._min)
        return [t for t in view if states is None or t.state in states]

    @property
    def trials(self):
        return self.get_trials()


class RungSampler(BaseSampler):
    """``inner`` reading the study through :func:`rung_view` (``rungs_of``: the promotion rule's
    :meth:`~sweeper.promotion.PromotionPruner.rungs`; ``min_trials=0``: no view) and asked again while it proposes
    the configuration of a RUNNING trial. A trial's own reports and results go to the study unchanged."""

    def __init__(self, inner: BaseSampler, rungs_of: Callable, min_trials: int):
        if min_trials < 0:
            raise ValueError(f"min_trials={min_trials}: must be >= 0")
        self.inner, self._rungs_of, self.min_trials = inner, rungs_of, min_trials

    def _view(self, study):
        return _StudyView(study, self._rungs_of, self.min_trials) if self.min_trials else study

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        view, names = self._view(study), sorted(search_space)
        held = {tuple(t.params[n] for n in names)
                for t in study._get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if names and t.number != trial.number and sorted(t.params) == names}
        for _ in range(REDRAWS if held else 1):
            params = self.inner.sample_relative(view, trial, search_space)
            if sorted(params) != names or tuple(params[n] for n in names) not in held:
                break
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values: Optional[Sequence[float]]):
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.inner.reseed_rng()

    def __repr__(self):
        return f"RungSampler({self.inner!r}, min_trials={self.min_trials})"
