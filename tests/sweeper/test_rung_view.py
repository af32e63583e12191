"""What the sampler reads under pause and promote (sweeper.rung_view): paused trials count with their rung values
once enough trials reached a rung, and TPE then proposes where the rung values are good. No trial runs."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
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
    untaught = build_pruner({"name": "promotion", "teach_sampler": 0}).taught(inner)
    assert isinstance(untaught, RungSampler) and untaught.min_trials == 0  # no view; still asked again
    with pytest.raises(ValueError, match="teach_sampler"):
        PromotionPruner(teach_sampler=-1)


class _Scripted(optuna.samplers.RandomSampler):
    """Proposes the configurations of ``script`` in turn (relative sampling of the one categorical ``x``)."""

    def __init__(self, script):
        super().__init__(seed=0)
        self.script, self.calls = list(script), 0

    def infer_relative_search_space(self, study, trial):
        return {"x": CategoricalDistribution(["a", "b", "c"])} if study.get_trials(states=(TrialState.RUNNING,)) else {}

    def sample_relative(self, study, trial, search_space):
        self.calls += 1
        return {"x": self.script.pop(0)} if search_space else {}


def test_a_proposal_of_a_paused_configuration_is_asked_again_and_never_reaches_the_study():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rule = PromotionPruner(min_resource=10, reduction_factor=3, teach_sampler=0)
    inner = _Scripted(["a", "a", "b"])
    study = optuna.create_study(direction="minimize", sampler=rule.taught(inner), pruner=rule)
    study.enqueue_trial({"x": "a"})
    paused = study.ask({"x": CategoricalDistribution(["a", "b", "c"])})
    paused.report(1.0, 10)  # it waits at the first rung, holding "a"
    trial = study.ask({"x": CategoricalDistribution(["a", "b", "c"])})
    assert trial.params == {"x": "b"} and inner.calls == 3  # "a" twice, asked again each time
    assert len(study.trials) == 2  # no trial was told FAIL for a repeat
    study.tell(trial, 2.0)
    inner.script = ["b"]
    again = study.ask({"x": CategoricalDistribution(["a", "b", "c"])})
    assert again.params == {"x": "b"} and inner.calls == 4  # "b" is finished, not held: left to the sweeper


def test_tpe_on_a_grid_of_choices_proposes_held_configurations_only_when_it_must():
    # the benchmark's 36-point space with six paused trials, the best near lr 2e-3: TPE (through the rung view)
    # proposes their configurations again and again (a FAIL trial each in the sweeper); asked again, almost never
    from sweeper import rung_view as rv

    space = {"lr": CategoricalDistribution([1e-4, 3e-4, 1e-3, 2e-3, 4e-3, 8e-3]),
             "rank": CategoricalDistribution([4, 16, 64]), "batch_size": CategoricalDistribution([8, 16])}

    def repeats(redraws, monkeypatch):
        monkeypatch.setattr(rv, "REDRAWS", redraws)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        rule = PromotionPruner(min_resource=10, reduction_factor=3, teach_sampler=4)
        study = optuna.create_study(direction="minimize", pruner=rule,
                                    sampler=rule.taught(optuna.samplers.TPESampler(n_startup_trials=4, seed=0)))
        for i, (lr, rank, batch) in enumerate([(2e-3, 16, 8), (2e-3, 64, 8), (4e-3, 16, 8), (1e-3, 16, 8),
                                               (8e-3, 4, 16), (1e-4, 4, 16)]):
            study.enqueue_trial({"lr": lr, "rank": rank, "batch_size": batch})
            t = study.ask(space)
            t.report(abs(lr - 2e-3) * 100 + i / 100, 10)  # paused at the first rung, best near lr 2e-3
        held = [t.params for t in study.trials]
        n = 0
        for _ in range(20):
            t = study.ask(space)
            n += t.params in held
            study.tell(t, state=TrialState.FAIL)
        return n

    with pytest.MonkeyPatch.context() as mp:
        once = repeats(1, mp)
    with pytest.MonkeyPatch.context() as mp:
        asked_again = repeats(32, mp)
    assert once >= 4 and asked_again <= 1, (once, asked_again)
