"""sweeper/setting_checks.py: every hydra.sweeper setting is checked before the study opens, all at once."""

from __future__ import annotations

import pytest

from sweeper.setting_checks import check_settings
from sweeper.study import SweepConfigError

OK = {"n_trials": 20, "n_jobs": 1, "heartbeat_s": 10.0, "stale_after_s": 60.0, "worker_max_trials": 50,
      "launcher": "accelerate", "workers": "warm", "sampler": "tpe", "pruner": "median"}


@pytest.mark.parametrize("setting, says", [
    ({"n_trials": -1}, "hydra.sweeper.n_trials=-1: must be >= 1"),
    ({"n_jobs": 0}, "hydra.sweeper.n_jobs=0: must be >= 1"),
    ({"pack": 0}, "hydra.sweeper.pack=0: must be a whole number >= 1"),
    ({"pack": 2.5}, "hydra.sweeper.pack=2.5: must be a whole number >= 1"),
    ({"pack": "many"}, "hydra.sweeper.pack=many: must be a whole number >= 1 (trials trained at once by a slot; 1: "
                       "one at a time), or auto"),
    ({"budget_wall_s": 0}, "hydra.sweeper.budget_wall_s=0: must be > 0"),
    ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate=1.5: must be in [0, 1]"),
    ({"gpus_per_trial": -1}, "hydra.sweeper.gpus_per_trial=-1"),
    ({"launcher": "mpirun"}, "choose accelerate or torchrun"),
    ({"workers": "tepid"}, "choose warm or fresh"),
    ({"direction": "upward"}, "choose minimize or maximize"),
    ({"storage": "nope"}, "give null, sqlite, journal or a URL"),
    ({"sampler": "nope"}, "hydra.sweeper.sampler=nope: choose one of tpe"),
    ({"sampler": {"name": "nsgaii", "population_size": 1}}, "population_size"),
    ({"pruner": {"name": "median", "n_startup_trials": -3}}, "cannot be negative"),
    ({"sampler": {"name": "gp", "n_startup_trials": 4}, "pruner": "hyperband"},
     "hydra.sweeper.pruner=hyperband: Optuna's GP sampler (hydra.sweeper.sampler=gp) learns only from "
     "complete trials"),
    ({"params": {"lr": "interval(1e-2,1e-4)"}}, "interval needs start < end"),
    ({"conditions": {"nope": {"method": ["lora"]}}}, "hydra.sweeper.conditions.nope: no such search parameter"),
])
def test_a_bad_setting_is_named_with_its_fix(setting, says):
    with pytest.raises(SweepConfigError) as err:
        check_settings({**OK, **setting}, ["lr=choice(1e-3,1e-2)"])
    assert says in str(err.value)


def test_the_gp_sampler_without_pruning_and_tpe_with_it_are_accepted():
    check_settings({**OK, "sampler": {"name": "gp", "n_startup_trials": 4}, "pruner": "none"}, ["lr=choice(1e-3,1e-2)"])
    check_settings({**OK, "sampler": "tpe", "pruner": "hyperband"}, ["lr=choice(1e-3,1e-2)"])


def test_every_problem_at_once_and_the_sweep_expression_named_as_typed():
    with pytest.raises(SweepConfigError) as err:
        check_settings({**OK, "n_trials": -1, "n_jobs": 0}, ["lr=interval(1e-2,1e-4)"])
    lines = str(err.value).splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == [
        "hydra.sweeper.n_trials=-1", "hydra.sweeper.n_jobs=0", "lr=interval(1e-2,1e-4)"]


def test_good_settings_pass():
    check_settings(OK, ["lr=tag(log,interval(1e-4,1e-2))"])
    check_settings({**OK, "heartbeat_s": 0.5, "storage": "journal", "sampler": "grid"}, ["rank=choice(8,16)"])
    check_settings({**OK, "pack": "auto"}, [])
