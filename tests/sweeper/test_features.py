"""Sweep features that had no test: the shipped presets with -m, a non-sft stage, launcher=torchrun,
the OOM-retry tag in MLflow, and tracking.log_model. Real ``python -m ftrun -m`` commands, tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import compose_cfg

from sweeper_helpers import fake_env, fake_sweep, ftrun_multirun  # noqa: F401  (fake_env is a fixture)

TINY = ["data.num_train=16", "data.num_eval=8", "max_steps=2", "train.logging_steps=1", "train.save_steps=0"]


def load(sweep_dir: Path):
    (db,) = sweep_dir.glob("*/study.db")
    return optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")


def result(trial) -> dict:
    return json.loads((Path(trial.user_attrs["trial_dir"]) / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lora_search", "qlora_search", "full_search", "method_search"])
def test_each_shipped_sweep_preset_runs_its_first_trial(preset, tiny_dir, tmp_path):
    out = ftrun_multirun([f"sweep={preset}", *TINY, "train.eval_steps=1", "tracking.enabled=false",
                          "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (t,) = load(tmp_path).trials
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert t.params["lr"] == pytest.approx(1e-4)  # the preset's enqueued recommendation ran first
    r = result(t)
    assert t.value == pytest.approx(r["eval_loss"]) and r["global_step"] == 2
    assert r["name"].split("-")[0] == ("lora" if preset == "method_search" else preset.split("_")[0])


def test_sweeping_a_non_sft_stage_maximizes_its_own_objective(tiny_dir, tmp_path):
    out = ftrun_multirun(["stage=rm", "lr=tag(log,interval(1e-4,1e-2))", *TINY, "train.eval_steps=1",
                          "cutoff_len=64", "tracking.enabled=false", "hydra.sweeper.n_trials=1",
                          "hydra.sweeper.pruner=none", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    study = load(tmp_path)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # eval_accuracy, the rm stage's objective
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    for t in study.trials:
        r = result(t)
        assert r["objective_name"] == "eval_accuracy" and t.value == pytest.approx(r["eval_accuracy"])


@pytest.mark.slow
def test_launcher_torchrun_starts_two_ranks_on_cpu(tiny_dir, tmp_path):
    out = ftrun_multirun(["lr=tag(log,interval(1e-4,1e-2))", *TINY, "train.eval_steps=0", "tracking.enabled=false",
                          "hydra.sweeper.n_trials=1", "hydra.sweeper.gpus_per_trial=2",
                          "hydra.sweeper.launcher=torchrun", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (t,) = load(tmp_path).trials
    assert t.state == optuna.trial.TrialState.COMPLETE
    log = (Path(t.user_attrs["trial_dir"]) / "trial.log").read_text()
    assert "-m torch.distributed.run --nproc_per_node 2" in log
    # both ranks trained: each sample batch is split over 2 processes, so 2 steps see 2 x 2 batches of 8
    r = result(t)
    assert r["global_step"] == 2
    state = json.loads((Path(t.user_attrs["trial_dir"]) / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(2 * 2 * 8 / 16)


def test_oom_retry_is_tagged_on_the_retried_trials_mlflow_run(tmp_path, fake_env, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    fake_env(FAKE_OOM_ABOVE=8, FAKE_MLFLOW=1)
    _, study = fake_sweep(tmp_path, ["lr=tag(log,interval(1e-5,1e-1))", "batch_size=choice(16)"], fixed=(),
                          n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    children = [r for r in runs if r.data.tags.get("optuna.trial") == "0"]
    retried = [r for r in children if r.data.tags.get("oom_retry") == "true"]
    assert len(retried) == 1 and retried[0].info.status == "FINISHED"
    first = [r for r in children if r is not retried[0]]
    assert first and first[0].data.tags["fail_reason"] == "out of memory (retried)"


def test_log_model_puts_the_weights_into_the_mlflow_run(tiny_dir, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from ftrun.train import run

    run(compose_cfg(["tracking.log_model=true", "max_steps=1", "train.eval_steps=0"], fast=True), tmp_path / "run")
    client = MlflowClient(tracking_uri=mlflow_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    logged = {Path(a.path).name for a in client.list_artifacts(r.info.run_id, "model")}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= logged
    assert len(logged) == len(list((tmp_path / "run" / "model").iterdir()))
