"""The sweep loop with a stand-in trial command (fake_trial.py): slots, devices, failures, OOM retry.

These run the real scheduler, storage and subprocesses; only the trial is fake,
so each takes seconds. The same behaviours with real training are in
test_real_sweeps.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from sweeper.slots import make_slots
from sweeper.sweep import SweepError
from sweeper_helpers import fake_env, fake_sweep  # noqa: F401  (fixture)

COMPLETE, FAIL, PRUNED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                          optuna.trial.TrialState.PRUNED)


def result(study, number) -> dict:
    t = study.trials[number]
    return json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())


@pytest.mark.parametrize("n_jobs, gpus_per_trial, devices, cores, expected", [
    (2, 1, ["0", "1", "2", "3"], range(8), [(["0"], [0, 1, 2, 3]), (["1"], [4, 5, 6, 7])]),
    (2, 2, ["0", "1", "2", "3"], range(4), [(["0", "1"], [0, 1]), (["2", "3"], [2, 3])]),
    (4, 2, ["0", "1", "2", "3"], range(4), [(["0", "1"], [0, 1]), (["2", "3"], [2, 3])]),  # n_jobs capped
    (2, 0, [], range(2), [([], [0]), ([], [1])]),  # CPU: the cores are split
    (3, None, [], range(2), [([], [0]), ([], [1]), ([], [0])]),  # more slots than cores: shared
])
def test_slots_split_devices_and_cores(n_jobs, gpus_per_trial, devices, cores, expected):
    slots = make_slots(n_jobs, gpus_per_trial, devices, cores)
    assert [(s.gpus, s.cores) for s in slots] == expected
    for s in slots:
        assert s.env()["CUDA_VISIBLE_DEVICES"] == ",".join(s.gpus)


def test_each_slot_gets_its_own_devices(tmp_path, fake_env):
    fake_env(FAKE_SLEEP=1)
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))"], n_trials=4, n_jobs=2,
                            gpus_per_trial=1, devices=["4", "7"])
    seen = [result(study, t.number)["cuda_visible_devices"] for t in study.trials]
    assert sorted(set(seen)) == ["4", "7"]
    for t in study.trials:  # each trial saw exactly its slot's device
        assert result(study, t.number)["cuda_visible_devices"] == t.user_attrs["devices"]


def test_slots_are_asynchronous(tmp_path, fake_env):
    """A slot that frees up starts the next trial while the other slot's long trial still runs."""
    fake_env(FAKE_SLEEP=1.0)
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "epochs=choice(1,10)"], n_trials=4,
                            n_jobs=2, enqueue=[{"epochs": 10, "lr": 1e-3}, {"epochs": 1, "lr": 1e-2},
                                               {"epochs": 1, "lr": 1e-4}, {"epochs": 1, "lr": 1e-5}])
    t = study.trials
    assert [x.state for x in t] == [COMPLETE] * 4
    long_end = t[0].datetime_complete
    # trials 1, 2 and 3 ran one after another in slot 1, all while trial 0 was still running
    for short in t[1:]:
        assert short.datetime_start < long_end and short.datetime_complete < long_end
    assert t[1].datetime_start < t[0].datetime_complete and t[0].datetime_start < t[1].datetime_complete


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # later trials may draw batch_size=0 again: a budget large enough that they never stop the sweep
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "batch_size=choice(0,8)"], n_trials=3,
                            enqueue=[{"batch_size": 0, "lr": 1e-3}], max_failures=50)
    states = [t.state for t in study.trials]
    assert states[0] == FAIL and states.count(COMPLETE) == 3  # failed trials are replaced
    assert "batch_size=0: batch_size must be >= 1" in study.trials[0].user_attrs["fail_reason"]
    assert "failed" in res.summary_path.read_text()


def test_too_many_failures_stop_the_sweep(tmp_path):
    with pytest.raises(SweepError, match="max_failures=1"):
        fake_sweep(tmp_path, ["batch_size=choice(0)", "lr=tag(log,interval(1e-5,1e-1))"], n_trials=5,
                   max_failures=1)
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp_path}/sweeps/test/study.db")
    assert [t.state for t in study.trials] == [FAIL, FAIL]


def test_out_of_memory_is_retried_with_half_batch_double_accumulation(tmp_path, fake_env):
    fake_env(FAKE_OOM_ABOVE=8)
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "batch_size=choice(16)", "grad_accum=2"],
                            n_trials=1)
    t = study.trials[0]
    assert t.state == COMPLETE and t.user_attrs["oom_retry"] == "batch_size=8 grad_accum=4"
    r = result(study, 0)
    assert (r["batch_size"], r["grad_accum"]) == (8, 4)  # effective batch unchanged: 16 x 2 = 8 x 4


def test_multi_objective_reports_the_pareto_front(tmp_path):
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "batch_size=choice(4,8,16)"],
                            n_trials=5, objectives=["eval_loss", "peak_memory_mb"], sampler="random", seed=0)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert res.best_trials == sorted(t.number for t in study.best_trials)
    assert "Pareto front" in res.summary_path.read_text()


def test_rerun_resumes_the_same_study_with_n_trials_as_total(tmp_path):
    args = ["lr=tag(log,interval(1e-5,1e-1))"]
    fake_sweep(tmp_path, args, n_trials=2)
    res, study = fake_sweep(tmp_path, args, n_trials=3)
    assert len(study.trials) == 3  # 2 kept + 1 more, not 2 + 3
    res, study = fake_sweep(tmp_path, args, n_trials=3)
    assert len(study.trials) == 3  # nothing left to do


@pytest.mark.parametrize("storage", [None, "journal", "sqlite:///{tmp}/elsewhere.db"])
def test_study_storage_default_journal_or_url(tmp_path, storage):
    if storage:
        storage = storage.format(tmp=tmp_path)
    res, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))"], n_trials=2, storage=storage)
    assert len(study.trials) == 2
    expected = {None: f"sqlite:///{tmp_path}/sweeps/test/study.db",
                "journal": f"journal:///{tmp_path}/sweeps/test/study.journal"}.get(storage, storage)
    assert res.storage == expected


def test_finite_space_caps_n_trials(tmp_path):
    res, study = fake_sweep(tmp_path, ["lr=1e-4,1e-3", "rank=choice(8,16)"], n_trials=20)
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(trained) == 4 and len({tuple(t.params.values()) for t in trained}) == 4


def test_a_configuration_already_trained_is_not_trained_again(tmp_path):
    res, study = fake_sweep(tmp_path, ["lr=1e-4,1e-3,1e-2"], n_trials=3, sampler="random", seed=0)
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert sorted(t.params["lr"] for t in trained) == [1e-4, 1e-3, 1e-2]  # n_trials distinct configurations
    for t in repeats:
        original = study.trials[t.user_attrs["duplicate_of"]]
        assert t.params == original.params and t.value == original.value and "trial_dir" not in t.user_attrs


def test_a_trial_asked_by_a_killed_sweeper_before_it_recorded_itself_is_retried(tmp_path):
    """A sweeper killed between study.ask() and writing its host/pid leaves a RUNNING trial with no owner;
    the rerun waits until it is stale, fails it with the reason, and still reaches n_trials."""
    args = ["lr=tag(log,interval(1e-5,1e-1))"]
    fake_sweep(tmp_path, args, n_trials=1, seed=0, pruner="none")
    from sweeper.study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps' / 'test' / 'study.db'}")
    orphan = optuna.load_study(study_name="test", storage=storage).ask()  # never told, no attributes
    _, study = fake_sweep(tmp_path, args, n_trials=3, seed=0, pruner="none", stale_after_s=1.0)
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == FAIL
    assert "left RUNNING" in study.trials[orphan.number].user_attrs["fail_reason"]
    assert sum(s == COMPLETE for s in states.values()) == 3
    assert not any(s == optuna.trial.TrialState.RUNNING for s in states.values())
