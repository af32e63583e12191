"""bench/sweep_efficiency.py's own logic on made-up numbers: the one-epoch procedure's choice of the top k from
a study's first evaluations, the hand-over of those to the second sweep, and the "reached within 1%" accounting.
No trial runs."""

from __future__ import annotations

import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tests.bench.bench_module import bench_module

bench = bench_module("sweep_efficiency")
DISTS = {"lr": CategoricalDistribution([1e-4, 1e-3, 4e-3]), "rank": CategoricalDistribution([4, 64])}


def _trial(lr, rank, first, later=None, state=TrialState.PRUNED):
    values = {} if first is None else {375: first}
    if later is not None:
        values[750] = later
    return create_trial(params={"lr": lr, "rank": rank}, distributions=DISTS, intermediate_values=values,
                        state=state, value=later if state == TrialState.COMPLETE else None)


def _study(trials):
    study = optuna.create_study()  # in memory
    for t in trials:
        study.add_trial(t)
    return study.trials  # numbered in order, as the sweep's study would be


def test_top_k_takes_the_best_first_evaluations_in_order():
    trials = _study([_trial(1e-4, 4, 2.0), _trial(1e-3, 4, 1.2), _trial(4e-3, 64, 1.5),
                     _trial(1e-3, 64, 1.2),  # ties with trial 1: the earlier trial comes first
                     _trial(4e-3, 4, None),  # reported nothing (failed before its first evaluation)
                     _trial(1e-4, 64, 3.0, later=0.9, state=TrialState.COMPLETE)])  # its later value does not count
    assert bench.top_k(trials, 3) == [{"lr": 1e-3, "rank": 4}, {"lr": 1e-3, "rank": 64}, {"lr": 4e-3, "rank": 64}]
    assert bench.top_k(trials, 1, maximize=True) == [{"lr": 1e-4, "rank": 64}]
    assert len(bench.top_k(trials, 10)) == 5


def test_the_top_k_reach_the_second_sweep_as_the_enqueued_values():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    picked = [{"lr": 0.0001, "rank": 64, "batch_size": 8}, {"lr": 0.004, "rank": 4, "batch_size": 16}]
    override = OverridesParser.create().parse_override(bench.enqueue_arg(picked))
    assert override.get_key_element() == "hydra.sweeper.enqueue"
    assert override.value() == picked


RECORDS = [  # finishing order: seconds, value (None: pruned)
    {"seconds": 10.0, "end": 10.0, "value": None},
    {"seconds": 20.0, "end": 25.0, "value": 1.05},
    {"seconds": 20.0, "end": 40.0, "value": 1.009},
    {"seconds": 30.0, "end": 60.0, "value": 1.0},
]


def test_reached_within_one_percent_counts_every_trials_seconds_until_then():
    assert bench.first_within(RECORDS, 1.0 * 1.01) == {"trial_s": 50.0, "wall_s": 40.0, "trials": 3}
    assert bench.first_within(RECORDS, 0.9) is None
    assert bench.best_within_budget(RECORDS, 49.0) == 1.05  # the third trial ends past the budget
    assert bench.best_within_budget(RECORDS, 50.0) == 1.009
    assert bench.best_within_budget(RECORDS[:1], 100.0) is None  # a pruned trial's value is no result


def test_median_over_seeds_treats_a_miss_as_never():
    hit = [{"trial_s": s} for s in (30.0, 90.0, 60.0)]
    assert bench.median_to_within(hit) == 60.0
    assert bench.median_to_within([hit[0], None, hit[1]]) == 90.0
    assert bench.median_to_within([hit[0], None, None]) is None
    assert bench.median_to_within([hit[0]]) == 30.0
    assert bench.median_to_within([]) is None


def test_one_epoch_phases_chain_into_one_procedure():
    low = {"name": "low", "wall": 100.0, "records": RECORDS[:1] * 3}
    top = {"name": "top", "wall": 50.0, "records": [{"seconds": 40.0, "end": 45.0, "value": 1.0}]}
    both = bench.chain([low, top])
    assert [r["end"] for r in both["records"]] == [10.0, 10.0, 10.0, 145.0]
    assert bench.first_within(both["records"], 1.01)["trial_s"] == 70.0  # the low-fidelity phase counts
    assert both["wall"] == 150.0


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "--task nope: unknown"),
    (["--configs", "tpe,grid"], "--configs grid: unknown"),
    (["--budget-share", "1.5"], "--budget-share takes a share"),
    (["--seeds", "a"], "--seeds a: give integers"),
])
def test_a_mistyped_option_is_one_line_not_a_traceback(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sweep_efficiency.py", *argv])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_trial_paused_before_the_hit_counts_its_seconds_though_it_ends_later():
    from sweep_efficiency import first_within

    records = [  # in finishing order: trial 0 paused at a rung after 5 s and closed at the sweep's end
        {"number": 1, "value": 1.0, "seconds": 20.0, "begin": 5.0, "end": 25.0},
        {"number": 0, "value": None, "seconds": 5.0, "begin": 0.0, "end": 90.0},
    ]
    assert first_within(records, 1.0)["trial_s"] == 25.0  # not 20: trial 0's 5 s came first
