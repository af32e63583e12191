"""bench/wsd_rungs.py's RungView (what a sampler reads under pause and promote) and its cost model. No trial runs."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.promotion import PromotionPruner
from tests.bench.bench_module import bench_module

rungs_bench = bench_module("wsd_rungs")


def study_with_reports(values_at_rung0, complete=()):
    """Trials left RUNNING (as paused ones are) after one report at 10 examples; ``complete``: (rung value, final)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize")
    for v in values_at_rung0:
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.report(v, 10)
    for rung_value, final in complete:
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.report(rung_value, 10)
        study.tell(t, final)
    return study


def test_paused_trials_read_as_complete_with_their_rung_value_once_enough_reached_it():
    study = study_with_reports([3.0, 1.0, 2.0, 4.0])
    rule = PromotionPruner(min_resource=10, reduction_factor=3)
    view = rungs_bench.RungView(study, rule.rungs, min_trials=4)
    seen = view._get_trials(states=(TrialState.COMPLETE,))
    assert [t.value for t in seen] == [3.0, 1.0, 2.0, 4.0]
    assert all(t.state == TrialState.RUNNING for t in study.get_trials())  # the study itself is untouched


def test_too_few_at_a_rung_or_enough_complete_trials_leave_the_study_as_it_is():
    rule = PromotionPruner(min_resource=10, reduction_factor=3)
    few = study_with_reports([3.0, 1.0, 2.0])
    assert rungs_bench.RungView(few, rule.rungs, min_trials=4)._get_trials(states=(TrialState.COMPLETE,)) == []
    done = study_with_reports([], complete=[(2.0, 1.5), (2.5, 1.2), (3.0, 1.9), (2.2, 1.1)])
    values = [t.value for t in rungs_bench.RungView(done, rule.rungs, 4)._get_trials(states=(TrialState.COMPLETE,))]
    assert values == [1.5, 1.2, 1.9, 1.1]  # the finals, not the rung values


def test_branch_seconds_grow_with_the_steps_before_them_and_sum_to_the_recorded_ones():
    rec = {"value": 1.0, "seconds": 20.0, "branch_s": 6.0, "branches": {10: 3.0, 20: 2.0, 30: 1.5, 40: 1.0}}
    cost = rungs_bench.branch_cost(rec)
    assert list(cost) == [10, 20, 30]  # the last report is the run's own end
    assert cost[10] < cost[20] < cost[30]
    assert sum(cost.values()) == pytest.approx(6.0)
