"""A sweep stops starting trials when its compute budget is spent, and its summary prices the grid."""

from __future__ import annotations

import json

import pytest

from sweeper_helpers import fake_env, fake_sweep  # noqa: F401  (fixture)


def test_trial_second_budget_stops_new_trials(tmp_path, fake_env):
    fake_env(FAKE_SLEEP=0.4)
    result, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))"], n_trials=100, pruner="none",
                               budget_trial_s=3.0)
    trials = sorted(study.trials, key=lambda t: t.datetime_start)
    spent = [t.user_attrs["duration_s"] for t in trials]
    assert 1 < len(trials) < 100
    assert sum(spent) >= 3.0  # it used its budget ...
    assert sum(spent[:-1]) < 3.0  # ... and started no trial after it was spent
    summary = (result.summary_path).read_text()
    assert "compute budget was spent" in summary


def test_wall_budget_stops_new_trials(tmp_path, fake_env):
    fake_env(FAKE_SLEEP=0.4)
    _, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))"], n_trials=100, pruner="none",
                          budget_wall_s=2.0)
    assert 1 < len(study.trials) < 100


def test_bad_budget_is_refused(tmp_path):
    from sweeper.study import SweepConfigError

    with pytest.raises(SweepConfigError, match="budget_trial_s=-1"):
        fake_sweep(tmp_path, ["lr=1e-3,1e-2"], budget_trial_s=-1)


def test_summary_states_compute_spent_and_the_grid_cost(tmp_path, fake_env):
    fake_env(FAKE_SLEEP=0.2)
    result, study = fake_sweep(tmp_path, ["lr=1e-4,1e-3,1e-2", "rank=8,16,32"], n_trials=4, pruner="none",
                               seed=0)
    compute = json.loads((result.sweep_dir / "summary.json").read_text())["compute"]
    durations = [t.user_attrs["duration_s"] for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert compute["trials"] == len(durations) == 4
    assert compute["trial_seconds"] == pytest.approx(sum(durations))
    assert compute["grid_configurations"] == 9
    assert compute["grid_trial_seconds"] == pytest.approx(9 * sum(durations) / len(durations))
    text = result.summary_path.read_text()
    assert "## Compute" in text and "the grid of this space has 9 configurations" in text
