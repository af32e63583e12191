"""Hydra finds the sweeper, the primary config selects it, and rerunning a sweep resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from conftest import ROOT
from ftrun.compose import compose
from sweeper_helpers import FAKE

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def test_hydra_discovers_the_sweeper_and_the_config_selects_it():
    names = [p.__module__ + "." + p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "hydra_plugins.ftrun_sweeper.ftrun_sweeper.FtrunSweeper" in names
    cfg = compose(["sweep=lora_search"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.ftrun_sweeper.ftrun_sweeper.FtrunSweeper"
    assert cfg.method.name == "lora"
    first = cfg.hydra.sweeper.enqueue[0]
    assert (first.lr, first.rank, first.alpha, first.batch_size * first.grad_accum, first.epochs) == (1e-4, 16, 32, 16, 3)


def test_every_preset_enqueues_the_common_recommendation_first():
    for preset in ("lora_search", "qlora_search", "full_search"):
        cfg = compose([f"sweep={preset}"], return_hydra_config=True)
        first = cfg.hydra.sweeper.enqueue[0]
        assert first.lr == 1e-4 and first.epochs == 3 and first.batch_size * first.grad_accum == 16, preset
        assert first.rank == 16 and first.alpha == 32, preset
        assert cfg.method.name == preset.split("_")[0]


def _command(sweep_dir: Path):
    return [sys.executable, "-m", "ftrun", "-m", "lr=tag(log,interval(1e-5,1e-1))", "tracking.enabled=false",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_s=0.5", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.command=[{FAKE[0]},{FAKE[1]}]"]


def test_resume_after_sigkill_of_the_sweep(tmp_path):
    env = {**os.environ, "FAKE_SLEEP": "4", "FAKE_CHECKPOINT": "1"}
    proc = subprocess.Popen(_command(tmp_path), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # wait until trial 1 runs and has written a checkpoint, then kill the sweep without warning
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/trial_0001/checkpoint-5/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (db,) = tmp_path.glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    out = subprocess.run(_command(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    t = study.trials
    assert sum(x.state == COMPLETE for x in t) == 3  # n_trials is the total, across both runs
    assert t[1].state == FAIL and "left RUNNING" in t[1].user_attrs["fail_reason"]
    retry = next(x for x in t if x.user_attrs.get("retry_of") == 1)
    assert retry.state == COMPLETE and retry.params == t[1].params
    import json
    r = json.loads((Path(retry.user_attrs["trial_dir"]) / "result.json").read_text())
    assert r["resumed_from"].endswith("trial_0001/checkpoint-5")  # continued from its last checkpoint
    assert t[0].datetime_complete < t[1].datetime_start  # trial 0 was not run again


def test_sigterm_stops_the_trials_and_leaves_them_to_the_next_run(tmp_path):
    env = {**os.environ, "FAKE_SLEEP": "30"}
    proc = subprocess.Popen(_command(tmp_path), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # wait (polling, with a deadline) until trial 0's process runs, then stop the sweep
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/trial_0000/fake_started")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted by signal 15" in err
    (db,) = tmp_path.glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    t = study.get_trials()
    assert t[0].state == FAIL and "retried" in t[0].user_attrs["fail_reason"]
    assert t[1].state.name == "WAITING" and t[1].user_attrs["retry_of"] == 0  # the next run starts with it
