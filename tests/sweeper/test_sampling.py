"""The sampler is not degenerate: every choice gets drawn, concurrent slots get different configurations,
and a resumed seeded study goes on drawing new points instead of replaying its first run's."""

from __future__ import annotations

from collections import Counter

import pytest

from sweeper_helpers import fake_env, fake_sweep  # noqa: F401  (fixture)


def test_random_sampler_draws_every_choice(tmp_path):
    # 40 draws over 4 choices miss one with probability 4 * 0.75**40 < 1e-4
    _, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "rank=choice(8,16,32,64)"],
                          n_trials=40, sampler="random", seed=0, pruner="none")
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(trained) == 40
    assert set(Counter(t.params["rank"] for t in trained)) == {8, 16, 32, 64}


def test_default_tpe_draws_both_ranks(tmp_path):
    """The report 'rank=choice(8,16) sampled rank=8 in 11 of 11 trials': TPE's 10 random startup
    trials draw both values except with probability 2 * 0.5**10 per sweep."""
    _, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-2))", "rank=choice(8,16)"],
                          n_trials=11, seed=3, pruner="none")
    assert set(t.params["rank"] for t in study.trials) == {8, 16}


@pytest.mark.parametrize("seed", range(5))
def test_two_slots_never_train_the_same_configuration_at_once(tmp_path, fake_env, seed):
    # 8 configurations: random startup points collide often; the sweeper asks again instead
    fake_env(FAKE_SLEEP=0.3)
    _, study = fake_sweep(tmp_path, ["rank=choice(8,16,32,64)", "batch_size=choice(4,8)"],
                          n_trials=4, n_jobs=2, seed=seed, pruner="none")
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    for a in trained:
        for b in trained:
            overlap = a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
            if a.number < b.number and overlap:
                assert a.params != b.params, (a.number, b.number, a.params)


def test_resumed_seeded_study_does_not_replay_its_startup_points(tmp_path):
    args = ["lr=tag(log,interval(1e-5,1e-1))", "rank=choice(8,16,32,64)"]
    fake_sweep(tmp_path, args, n_trials=5, sampler="random", seed=0, pruner="none")
    _, study = fake_sweep(tmp_path, args, n_trials=10, sampler="random", seed=0, pruner="none")
    first, second = study.trials[:5], study.trials[5:]
    assert len(second) == 5
    assert not any("duplicate_of" in t.user_attrs for t in study.trials)
    assert {t.params["lr"] for t in first}.isdisjoint({t.params["lr"] for t in second})
