"""Warm trial workers: a warm trial equals a fresh one, a dead worker fails its trial and is replaced,
a worn one is retired; '+key' overrides and --config-dir reach warm trials; MLflow nesting holds."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, compose_cfg
from sweeper_helpers import ftrun_multirun

TRIAL = ["data.num_train=64", "data.num_eval=32", "batch_size=8", "train.logging_steps=2", "train.save_steps=0"]


def load(sweep_dir: Path):
    (db,) = Path(sweep_dir).glob("*/study.db")
    return optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    """A user's own config dir with an experiment preset, used as '+experiment=small'."""
    conf = tmp_path_factory.mktemp("userconf")
    (conf / "experiment").mkdir()
    (conf / "experiment" / "small.yaml").write_text(
        "# @package _global_\n"
        "data:\n  num_train: 64\n  num_eval: 32\n"
        "max_steps: 6\nbatch_size: 8\ntrain:\n  eval_steps: 3\n  save_steps: 0\n  logging_steps: 2\n")
    return conf


@pytest.fixture(scope="module")
def warm_and_fresh(tmp_path_factory, experiment_dir):
    """The same two-point grid swept with warm workers and with a fresh process per trial."""
    out = {}
    for mode in ("warm", "fresh"):
        tmp = tmp_path_factory.mktemp(mode)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        proc = ftrun_multirun(["--config-dir", str(experiment_dir), "+experiment=small", "lr=choice(1e-3,3e-3)",
                               "hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=none",
                               f"hydra.sweeper.workers={mode}", f"hydra.sweep.dir={tmp / 'sweeps'}"],
                              env={"MLFLOW_TRACKING_URI": uri})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        out[mode] = {"study": load(tmp / "sweeps"), "uri": uri}
    return out


def test_warm_trial_result_equals_fresh_trial(warm_and_fresh):
    warm = {t.params["lr"]: t for t in warm_and_fresh["warm"]["study"].trials}
    fresh = {t.params["lr"]: t for t in warm_and_fresh["fresh"]["study"].trials}
    assert sorted(warm) == sorted(fresh) == [1e-3, 3e-3]
    for lr in warm:
        assert warm[lr].state.name == fresh[lr].state.name == "COMPLETE"
        assert abs(warm[lr].value - fresh[lr].value) <= 1e-6, (lr, warm[lr].value, fresh[lr].value)
    # the two warm trials ran in one worker; the second reused its tokenized data and base weights
    first, second = sorted(warm.values(), key=lambda t: t.number)
    assert first.user_attrs["worker_pid"] == second.user_attrs["worker_pid"]
    assert [first.user_attrs["worker_trial"], second.user_attrs["worker_trial"]] == [1, 2]
    log = (Path(second.user_attrs["trial_dir"]) / "trial.log").read_text()
    assert "Reusing the base model" in log and "Reusing the tokenized data" in log
    assert "worker_pid" not in next(iter(fresh.values())).user_attrs


def test_warm_trial_gets_the_experiment_preset_and_its_own_mlflow_child(warm_and_fresh):
    from mlflow.tracking import MlflowClient

    study = warm_and_fresh["warm"]["study"]
    for t in study.trials:
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
        assert result["global_step"] == 6  # max_steps from +experiment=small, through --config-dir
        assert {"setup", "data", "model", "train", "eval", "save"} <= set(result["phases_s"])
    client = MlflowClient(tracking_uri=warm_and_fresh["warm"]["uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("ftrun.sweep") == "true"]
    assert len(parents) == 1
    # '+experiment=small' is logged as a valid MLflow param name (it used to crash the sweep)
    assert parents[0].data.params["fixed.experiment"] == "small"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(float(r.data.params["optimizer.lr"]) for r in children) == [1e-3, 3e-3]
    assert len({r.info.run_id for r in children}) == 2
    assert all(r.info.status == "FINISHED" for r in children)


def test_warm_and_fresh_trials_keep_the_libraries_no_trial_needs_out(warm_and_fresh):
    import importlib.util

    from ftrun.unused_libraries import CANDIDATES

    installed = [name for name in CANDIDATES if importlib.util.find_spec(name) is not None]
    for mode in ("warm", "fresh"):  # the sweeper tells warm workers (ftrun.unused_libraries.unused_in_sweep)
        for t in warm_and_fresh[mode]["study"].trials:
            result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
            assert result["hidden_libraries"] == installed, mode


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_killed_worker_fails_its_trial_and_the_slot_gets_a_new_worker(tmp_path):
    """SIGKILL the worker mid-training (what the kernel's OOM killer does): the trial is FAIL with the reason,
    the sweep goes on in a new worker."""
    sweeps = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "ftrun", "-m", *TRIAL, "max_steps=choice(3000,4)", "tracking.enabled=false",
           "hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=none", f"hydra.sweep.dir={sweeps}"]
    log_file = open(tmp_path / "sweep.log", "w")  # a file, not a pipe nobody reads while the test waits
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        def training():
            # not a look at the study before a trial exists: opening an empty study.db makes Optuna create its
            # tables from this process too, and the sweeper's own create then fails ("table already exists")
            if not list(sweeps.glob("*/trial_0000/trial.log")):
                return None
            trials = load(sweeps).trials
            t = trials[0] if trials else None
            if t is None or "worker_pid" not in t.user_attrs:
                return None
            log = Path(t.user_attrs["trial_dir"]) / "trial.log"
            return t if log.is_file() and "Building trainer" in log.read_text() else None

        t0 = _wait_for(training, 300, "the first trial to train in its warm worker: "
                       + ((tmp_path / "sweep.log").read_text()[-2000:] if (tmp_path / "sweep.log").exists() else ""))
        assert t0.params["max_steps"] == 3000
        os.kill(t0.user_attrs["worker_pid"], signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    assert proc.returncode == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    trials = load(sweeps).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    reason = trials[0].user_attrs["fail_reason"]
    assert f"warm worker (pid {t0.user_attrs['worker_pid']}) died" in reason and "signal 9" in reason
    assert trials[1].user_attrs["worker_pid"] != t0.user_attrs["worker_pid"]
    assert trials[1].user_attrs["worker_trial"] == 1


def test_worker_is_retired_after_max_trials(tmp_path, monkeypatch):
    from sweeper.sweep import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    fixed = [*TRIAL, "max_steps=2", "tracking.enabled=false"]
    conf = {"study_name": "retire", "sampler": "grid", "pruner": "none", "worker_max_trials": 1}
    result = run_sweep(conf, ["lr=1e-3,2e-3", *fixed], compose_cfg(fixed), tmp_path / "sweeps")
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    pids = [t.user_attrs["worker_pid"] for t in study.trials]
    assert pids[0] != pids[1]  # one trial each: the first worker was retired
    assert [t.user_attrs["worker_trial"] for t in study.trials] == [1, 1]


def test_a_diverged_warm_trial_ends_with_status_3_and_no_traceback(tmp_path):
    """The warm worker ends a run through the same exit-status map as ``python -m ftrun`` (ftrun.exit_status)."""
    from ftrun.exit_status import EXIT_DIVERGED
    from sweeper.slots import make_slots
    from sweeper.worker import WarmTrial, Worker

    (slot,) = make_slots(1, gpus_per_trial=0)
    worker = Worker(slot, tmp_path / "worker.log", env={"TOKENIZERS_PARALLELISM": "false"})
    log = tmp_path / "trial" / "trial.log"
    log.parent.mkdir()
    try:
        trial = WarmTrial(worker, {"args": [*TRIAL, "lr=1e3", "max_steps=30", "train.eval_steps=0",
                                            "tracking.enabled=false", f"hydra.run.dir={log.parent}"],
                                   "env": {}, "log": str(log)})
        rc = trial.wait(timeout=600)
    finally:
        worker.close()
    text = log.read_text()
    assert rc == EXIT_DIVERGED, text[-3000:]
    # (NaN on CPUs whose kernels give NaN there, zeros and a dead model on others: ftrun.divergence)
    assert "Traceback" not in text and re.search(r"diverged: (the gradient is nan|every gradient is 0\.0) at step", text)
    assert json.loads((log.parent / "result.json").read_text())["status"] == "diverged"
