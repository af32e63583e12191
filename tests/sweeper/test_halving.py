"""sweeper.halving: Optuna's successive halving with its first rung at the study's first evaluation."""

from __future__ import annotations

import optuna
import pytest

from sweeper.study import build_pruner


def _study(pruner):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))


def _trained(study, curve):
    """A trial that reports ``curve`` ([(examples, value)]) and completes, or stops where the pruner says."""
    trial = study.ask()
    for step, value in curve:
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, curve[-1][1])
    return None


@pytest.mark.parametrize("first", [250, 240])
def test_the_first_rung_is_the_studys_first_evaluation(first):
    """A trial worse than the first one at the first evaluation stops there (rungs: first evaluation x 2^k); with
    Optuna's own first rung set past it (min_resource=500) the same trial goes on to its next rung."""
    spec = {"name": "successive_halving", "min_resource": "first_evaluation", "reduction_factor": 2}
    study = _study(build_pruner(spec))
    assert _trained(study, [(first, 1.0), (first + 250, 0.9), (first + 500, 0.8)]) is None
    assert _trained(study, [(first, 2.0), (first + 250, 1.9), (first + 500, 1.8)]) == first
    assert study.pruner._min_resource == first

    later = _study(build_pruner({**spec, "min_resource": 500}))
    _trained(later, [(first, 1.0), (first + 250, 0.9), (first + 500, 0.8)])
    steps = [first, first + 250, first + 500]
    assert _trained(later, list(zip(steps, [2.0, 1.9, 1.8]))) == min(s for s in steps if s >= 500)


def test_a_better_trial_at_the_first_evaluation_goes_on_and_a_study_without_reports_prunes_nothing():
    study = _study(build_pruner({"name": "successive_halving", "min_resource": "first_evaluation",
                                 "reduction_factor": 2}))
    study.ask()
    assert study.pruner.prune(study, study.trials[-1]) is False  # nothing reported yet
    _trained(study, [(250, 2.0), (500, 1.9)])
    assert _trained(study, [(250, 1.0), (500, 0.9)]) is None


def test_optunas_own_min_resource_values_still_work():
    assert build_pruner({"name": "successive_halving", "min_resource": 3})._min_resource == 3
    assert build_pruner({"name": "successive_halving"})._min_resource is None  # Optuna's auto, from the first trial


def test_a_misspelt_first_rung_is_refused_naming_the_choices():
    from sweeper.setting_checks import check_settings
    from sweeper.study import SweepConfigError

    with pytest.raises(SweepConfigError, match="first_evaluation"):
        check_settings({"pruner": {"name": "successive_halving", "min_resource": "first_eval"}},
                       ["lr=choice(1e-3,1e-2)"])
