"""What the sampler reads under pause and promote (sweeper.rung_view): paused trials count with their rung values
once enough trials reached a rung, and TPE then proposes where the rung values are good. No trial runs."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeper.promotion import PromotionPruner
from sweeper.rung_view import RungSampler, rung_view
from sweeper.study import build_pruner

X = {"x": FloatDistribution(0, 1)}


def _study(rung_values, complete=()):
    """Trials left RUNNING after one report at 10 examples (as paused trials are); ``complete``: (rung value,
    final value) of trials told COMPLETE."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize", pruner=PromotionPruner(min_resource=10, reduction_factor=3))
    for v in rung_values:
        t = study.ask(X)
        t.report(v, 10)
    for rung_value, final in complete:
        t = study.ask(X)
        t.report(rung_value, 10)
        study.tell(t, final)
    return study


def _complete(view):
    return [t.value for t in view if t.state == TrialState.COMPLETE]


def test_paused_trials_read_as_complete_with_their_rung_value_once_enough_reached_it():
    study = _study([3.0, 1.0, 2.0, 4.0])
    assert _complete(rung_view(study.get_trials(), study.pruner.rungs(study.get_trials()), 4)) == [3.0, 1.0, 2.0, 4.0]
    assert all(t.state == TrialState.RUNNING for t in study.get_trials())  # the study itself is untouched


def test_too_few_at_a_rung_or_enough_complete_trials_leave_the_trials_as_they_are():
    few = _study([3.0, 1.0, 2.0])
    assert _complete(rung_view(few.get_trials(), few.pruner.rungs(few.get_trials()), 4)) == []
    done = _study([], complete=[(2.0, 1.5), (2.5, 1.2), (3.0, 1.9), (2.2, 1.1)])
    assert _complete(rung_view(done.get_trials(), done.pruner.rungs(done.get_trials()), 4)) == [1.5, 1.2, 1.9, 1.1]


def test_the_highest_rung_enough_trials_reached_is_the_one_modelled():
    study = _study([5.0, 4.0, 3.0, 2.0])
    for number, later in ((0, 0.5), (1, 0.7), (2, 0.9), (3, 0.6)):  # all four go on to rung 1 (30 examples)
        study._storage.set_trial_intermediate_value(study.get_trials()[number]._trial_id, 30, later)
    view = rung_view(study.get_trials(), study.pruner.rungs(study.get_trials()), 4)
    assert _complete(view) == [0.5, 0.7, 0.9, 0.6]


def test_tpe_reading_paused_trials_proposes_where_their_rung_values_are_good():
    # twelve paused trials at x = 0.0 .. 1.1 (their rung value grows with x): with the view TPE proposes low x;
    # without it TPE has no finished trial and samples at random
    def proposals(min_trials):
        inner = optuna.samplers.TPESampler(n_startup_trials=4, seed=0)
        rule = PromotionPruner(min_resource=10, reduction_factor=3, teach_sampler=min_trials)
        study = optuna.create_study(direction="minimize", sampler=rule.taught(inner), pruner=rule)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for i in range(12):
            study.enqueue_trial({"x": i / 12})
            t = study.ask()
            t.suggest_float("x", 0, 1)
            t.report(1.0 + t.params["x"], 10)
        xs = []
        for _ in range(10):
            t = study.ask()
            xs.append(t.suggest_float("x", 0, 1))
            study.tell(t, state=TrialState.FAIL)
        return sum(xs) / len(xs)

    assert proposals(4) < 0.3
    assert proposals(0) > 0.35


def test_the_promotion_rule_teaches_its_sampler_by_default_and_refuses_a_bad_count():
    inner = optuna.samplers.TPESampler()
    taught = build_pruner({"name": "promotion"}).taught(inner)
    assert isinstance(taught, RungSampler) and taught.inner is inner and taught.min_trials == 4
    assert build_pruner({"name": "promotion", "teach_sampler": 0}).taught(inner) is inner
    with pytest.raises(ValueError, match="teach_sampler"):
        PromotionPruner(teach_sampler=-1)
