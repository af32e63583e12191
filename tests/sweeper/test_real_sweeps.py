"""Real sweeps: ``python -m ftrun -m ...`` training the tiny model in fresh trial processes.

One sweep (module fixture, about 1.5 minutes on 2 cores) is read back by several
tests, each checking one behaviour: two slots overlapping in time, a trial that
the pruner stops early, a failing trial, and the MLflow parent/child structure.
The enqueued trials make it deterministic: two good learning rates run side by
side, then a trial with batch_size=0 (fails), then lr=1e-5 (pruned at an evaluation
past the pruner's warmup, against the median of the two finished ones).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import ROOT
from sweeper_helpers import ftrun_multirun

FAST_TRIAL = ["data.num_train=64", "data.num_eval=32", "max_steps=12", "train.logging_steps=2",
              "train.eval_steps=2", "train.save_steps=0"]
# Pruning starts at 32 examples (step 4): at step 2 the higher learning rates' loss is still rising
# above lr=1e-5's, so a pruner there would have nothing to say.
MEDIAN = "hydra.sweeper.pruner={name:median,n_startup_trials:2,n_warmup_steps:32}"


def load(sweep_dir: Path):
    (db,) = sweep_dir.glob("*/study.db")
    return optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = ftrun_multirun([
        "lr=tag(log,interval(1e-5,1e-1))", "batch_size=choice(0,8)", *FAST_TRIAL,
        "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", MEDIAN, f"hydra.sweep.dir={tmp / 'sweeps'}",
        "hydra.sweeper.enqueue=[{lr:3e-3,batch_size:8},{lr:1e-3,batch_size:8},{lr:1e-3,batch_size:0},"
        "{lr:1e-5,batch_size:8}]",
    ], env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    study = load(tmp / "sweeps")
    return {"study": study, "trials": study.trials, "uri": uri, "log": out.stdout + out.stderr}


def test_two_slots_run_trials_at_the_same_time(sweep):
    a, b = sweep["trials"][:2]
    assert a.user_attrs["slot"] != b.user_attrs["slot"]
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


def test_pruned_trial_stops_early_and_is_pruned(sweep):
    t = sweep["trials"][3]
    assert t.params["lr"] == pytest.approx(1e-5)
    assert t.state == optuna.trial.TrialState.PRUNED
    result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
    assert result["pruned"] is True
    # stopped at an evaluation past the warmup, not at max_steps: the first one (step 4) when both start-up
    # trials have completed by then, a later one when the other slot's trial was still training (n_jobs=2)
    step = result["global_step"]
    assert 4 <= step < 12 and step % 2 == 0
    # reported at every evaluation up to there, under the training examples seen (steps of batch 8), so batch
    # sizes compare fairly
    assert list(t.intermediate_values) == [s * 8 for s in range(2, step + 1, 2)]


def test_failing_trial_is_fail_with_reason_and_sweep_finishes(sweep):
    states = [t.state.name for t in sweep["trials"]]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert "batch_size=0: batch_size must be >= 1" in sweep["trials"][2].user_attrs["fail_reason"]


def test_mlflow_parent_run_with_nested_trial_runs(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep["uri"])
    exp = client.get_experiment_by_name("ftrun")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("ftrun.sweep") == "true"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study_name"] == sweep["study"].study_name
    assert parent.data.params["space.lr"] == "float[1e-05, 0.1, log]"
    best = sweep["study"].best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    children = {r.data.tags["optuna.trial"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["0", "1", "2", "3"]
    assert [children[n].info.status for n in "0123"] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert "batch_size=0" in children["2"].data.tags["fail_reason"]
    assert children["3"].data.tags["pruned"] == "true"
    assert len(client.get_metric_history(children["0"].info.run_id, "eval_loss")) >= 6  # the full history
    assert "Rerun the best trial" in sweep["log"]


@pytest.mark.slow  # about a minute: two ranks of accelerate per trial
def test_two_process_trial_on_cpu_prunes_on_every_rank(tmp_path):
    """gpus_per_trial=2 on CPU: accelerate starts 2 ranks (gloo); rank 0's prune decision stops both."""
    short = [o for o in FAST_TRIAL if not o.startswith("max_steps=")] + ["max_steps=4"]  # prune at 2 of 4
    out = ftrun_multirun([
        "lr=tag(log,interval(1e-5,1e-1))", *short, "tracking.enabled=false", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.gpus_per_trial=2", "hydra.sweeper.pruner={name:median,n_startup_trials:1}",
        f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.enqueue=[{lr:3e-3},{lr:1e-5}]",
    ])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    t = load(tmp_path).trials
    assert [x.state.name for x in t] == ["COMPLETE", "PRUNED"]
    log = (Path(t[1].user_attrs["trial_dir"]) / "trial.log").read_text()
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in log
    assert "[rank1]" in log or log.count("Pruned by the sweep at step 2") == 2  # two ranks ran
    result = json.loads((Path(t[1].user_attrs["trial_dir"]) / "result.json").read_text())
    assert result["global_step"] == 2


@pytest.mark.slow  # about a minute: two real sweeps, one killed
def test_real_resume_after_sigkill_continues_from_checkpoint(tmp_path):
    args = ["lr=tag(log,interval(1e-5,1e-1))", "data.num_train=64", "data.num_eval=16", "max_steps=8",
            "train.eval_steps=4", "train.save_steps=2", "tracking.enabled=false", "hydra.sweeper.n_trials=1",
            "hydra.sweeper.pruner=none", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "ftrun", "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("*/trial_0000/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = ftrun_multirun(args)
    assert out.returncode == 0, out.stderr[-3000:]
    t = load(tmp_path).trials
    assert [x.state.name for x in t] == ["FAIL", "COMPLETE"]
    assert "from its last checkpoint" in t[0].user_attrs["fail_reason"]
    assert t[1].user_attrs["retry_of"] == 0 and t[1].user_attrs["trial_dir"] == t[0].user_attrs["trial_dir"]
    assert "Resuming from" in (Path(t[1].user_attrs["trial_dir"]) / "trial.log").read_text()
