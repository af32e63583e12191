"""A NaN loss or gradient stops the run within a few steps; a sweep records the trial and goes on.

Without :mod:`ftrun.divergence` each of these runs would train to ``max_steps`` on NaN
gradients and finish with status 0, so every test here fails when the callback is gone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT, compose_cfg

from ftrun.divergence import Diverged
from ftrun.exit_status import EXIT_DIVERGED
from ftrun.train import RESULT_FILE, run

MAX_STEPS = 30
NAN_AT_STEP = 3
# lr=1e3 overflows the activations: some CPUs' kernels then give NaN, others (AVX-512) zeros and a dead model
BLOWN_UP = r"diverged: (the gradient is nan|every gradient is 0\.0) at step"


def patch_loss(monkeypatch, at_step: int, change) -> None:
    """From training forward pass ``at_step`` on, the run's loss is ``change(loss)`` (a fault, not an lr): the Trainer
    the run builds (ftrun.linear_cross_entropy.trainer_class, chunked loss or not) gets it from compute_loss."""
    import ftrun.linear_cross_entropy as lce

    trainer_class = lce.trainer_class

    def patched(cfg):
        class Faulty(trainer_class(cfg)):
            calls = 0

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if return_outputs or not model.training:
                    return out
                Faulty.calls += 1
                return change(out) if Faulty.calls >= at_step else out

        return Faulty

    monkeypatch.setattr(lce, "trainer_class", patched)


def inject_nan_loss(monkeypatch, at_step: int) -> None:
    patch_loss(monkeypatch, at_step, lambda loss: loss * float("nan"))


def test_injected_nan_stops_the_run_at_that_step_and_fails_its_mlflow_run(tiny_dir, tmp_path, mlflow_uri, monkeypatch):
    from mlflow import MlflowClient

    inject_nan_loss(monkeypatch, at_step=NAN_AT_STEP)
    cfg = compose_cfg([f"max_steps={MAX_STEPS}", "train.eval_steps=0", "train.logging_steps=1"], fast=True)
    with pytest.raises(Diverged, match=rf"diverged: the gradient is nan at step {NAN_AT_STEP}\b") as caught:
        run(cfg, tmp_path / "run")
    # stopped before the optimizer applied the NaN gradient: steps 1..NAN_AT_STEP-1 done, no more
    result = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert result["status"] == "diverged" and result["objective"] is None
    assert result["global_step"] == NAN_AT_STEP - 1 < MAX_STEPS
    assert result["reason"] == caught.value.reason
    assert not (tmp_path / "run" / "model").exists()  # no NaN weights saved as the run's model

    client = MlflowClient(tracking_uri=mlflow_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    assert r.info.status == "FAILED"
    assert r.data.tags["status"] == "diverged"
    assert r.data.tags["fail_reason"] == caught.value.reason
    assert r.data.metrics["diverged_at_step"] == NAN_AT_STEP


def test_gradients_all_zero_for_a_few_steps_stop_the_run(tiny_dir, tmp_path, monkeypatch):
    """A model whose outputs collapsed (every gradient exactly 0, the loss finite) is dead, not training."""
    from ftrun.divergence import DEAD_PATIENCE

    patch_loss(monkeypatch, NAN_AT_STEP, lambda loss: loss * 0.0 + loss.detach())  # the same loss, no gradient
    cfg = compose_cfg([f"max_steps={MAX_STEPS}", "train.eval_steps=0", "train.logging_steps=1",
                       "tracking.enabled=false"], fast=True)
    dead_at = NAN_AT_STEP + DEAD_PATIENCE - 1
    with pytest.raises(Diverged, match=rf"every gradient is 0.0 at step {dead_at} .*{DEAD_PATIENCE} steps in a row"):
        run(cfg, tmp_path / "run")
    result = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert result["status"] == "diverged" and result["global_step"] == dead_at - 1


def test_a_loss_that_explodes_but_stays_finite_stops_the_run(tiny_dir, tmp_path, monkeypatch):
    """From step NAN_AT_STEP on the logged loss reads 1000x (its gradient unchanged): finite, but exploded."""
    from ftrun.divergence import LOSS_BLOWUP

    patch_loss(monkeypatch, NAN_AT_STEP, lambda loss: loss + 999 * loss.detach())
    cfg = compose_cfg([f"max_steps={MAX_STEPS}", "train.eval_steps=0", "train.logging_steps=1",
                       "tracking.enabled=false"], fast=True)
    with pytest.raises(Diverged, match=rf"the train loss is \S+ at step {NAN_AT_STEP} .*over {LOSS_BLOWUP:g}x the "
                                       r"first logged loss"):
        run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / RESULT_FILE).read_text())["status"] == "diverged"


def test_the_callback_passes_a_finite_run_untouched(tiny_dir, tmp_path):
    # the other half of the claim: no false alarm on a healthy run (it would raise here)
    cfg = compose_cfg(["max_steps=4", "train.eval_steps=0", "train.logging_steps=1", "tracking.enabled=false"],
                      fast=True)
    run(cfg, tmp_path)
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert result["status"] == "finished" and result["global_step"] == 4


def test_cli_run_at_lr_1e3_stops_with_one_message_and_exit_status_3(tiny_dir, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-m", "ftrun", "lr=1e3", "data.num_train=64", "data.num_eval=8",
                          f"max_steps={MAX_STEPS}", "batch_size=8", "train.eval_steps=0", "train.save_steps=0",
                          f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == EXIT_DIVERGED, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and re.search(BLOWN_UP, errors[0]), errors
    result = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert result["status"] == "diverged" and result["global_step"] < 10  # not MAX_STEPS of NaN


def test_sweep_records_a_diverged_trial_and_goes_on(tmp_path):
    """Trial 0 (lr=1e3) diverges; trial 1 (lr=1e-3) still runs and completes; the sweep exits 0."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([
        sys.executable, "-m", "ftrun", "-m", "lr=tag(log,interval(1e-5,1e4))", "data.num_train=64", "data.num_eval=16",
        f"max_steps={MAX_STEPS}", "batch_size=8", "train.eval_steps=0", "train.save_steps=0",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=none", f"hydra.sweep.dir={tmp_path / 'sweeps'}",
        "hydra.sweeper.enqueue=[{lr:1e3},{lr:1e-3}]",
    ], cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (db,) = (tmp_path / "sweeps").glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    diverged, good = study.trials
    assert diverged.params["lr"] == pytest.approx(1e3) and good.params["lr"] == pytest.approx(1e-3)
    assert diverged.state == optuna.trial.TrialState.PRUNED  # counts toward n_trials; the sampler avoids it
    assert diverged.user_attrs["diverged"] is True
    assert re.match(BLOWN_UP, diverged.user_attrs["fail_reason"])
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert good.datetime_start >= diverged.datetime_complete  # the sweep went on after the divergence

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    child = {r.data.tags.get("optuna.trial"): r for r in runs if r.data.tags.get("ftrun.sweep") != "true"}
    assert child["0"].info.status == "FAILED" and child["0"].data.tags["status"] == "diverged"
    assert "pruned" not in child["0"].data.tags
    assert child["1"].info.status == "FINISHED"
