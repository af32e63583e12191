"""A sweep on the ROUGE-L of generated answers: the study maximizes it, the pruner sees it at every
evaluation and stops a hopeless trial, and each trial's value is its best checkpoint's score."""

from __future__ import annotations

import json

import optuna

from sweeper_helpers import ftrun_multirun


def test_a_sweep_on_eval_rouge_l_prunes_and_keeps_each_trials_best_checkpoint(tmp_path):
    out = ftrun_multirun([
        "objective=eval_rouge_l", "train.generate.max_samples=8", "train.generate.max_new_tokens=10",
        "data.num_train=96", "data.num_eval=16", "max_steps=18", "batch_size=8", "train.eval_steps=6",
        "train.logging_steps=6", "scheduler=constant", "tracking.enabled=false",
        "lr=tag(log,interval(1e-6,1e-2))", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner={name:median,n_startup_trials:1,n_warmup_steps:0}",
        "hydra.sweeper.enqueue=[{lr:5e-3},{lr:1e-6},{lr:3e-3}]",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (db,) = (tmp_path / "sweeps").glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    good, hopeless, _ = study.trials
    assert good.state.name == "COMPLETE" and len(good.intermediate_values) == 3
    # lr 1e-6 barely moves from the base model, whose answers score below the first trial's at its first
    # evaluation: the median pruner stops it there
    assert hopeless.state.name == "PRUNED", (good.intermediate_values, hopeless.intermediate_values)
    assert len(hopeless.intermediate_values) == 1
    # a finished trial's value is its best evaluation (the checkpoint it ends on), not the last one
    assert good.value == max(good.intermediate_values.values())
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "sweeps").glob("*/trial_0000/**/result.json")]
    assert result["objective"] == good.value and result["best_step"] in (6, 12, 18)


def test_a_configuration_that_cannot_fit_the_memory_limit_is_pruned_before_launch(tmp_path):
    # the tiny model's process estimate (the runtime's baseline, about 0.7 GiB, + the tensors): about
    # 0.8 GiB at batch 2 x 512 tokens, about 1.9 GiB at batch 64 x 512
    out = ftrun_multirun([
        "data.num_train=32", "data.num_eval=8", "max_steps=2", "train.eval_steps=0", "train.save_steps=0",
        "tracking.enabled=false", "data.cutoff_len=512", "batch_size=choice(2,64)", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.memory_limit_gb=1.5", "hydra.sweeper.enqueue=[{batch_size:64},{batch_size:2}]",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (db,) = (tmp_path / "sweeps").glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    big, small = study.trials
    assert big.params == {"batch_size": 64} and big.state.name == "PRUNED"
    reason = big.user_attrs["fail_reason"]
    assert "does not fit" in reason and "vs limit 1.50 GiB" in reason and "batch_size=64" in reason
    assert not list((db.parent / "trial_0000").glob("**/result.json"))  # never ran
    assert small.state.name == "COMPLETE"
    assert "skipped before launch" in (db.parent / "summary.md").read_text()


def test_a_sweep_on_an_eval_objective_without_an_eval_split_is_refused_before_any_trial(tmp_path):
    out = ftrun_multirun(["data.num_eval=0", "lr=tag(log,interval(1e-5,1e-2))", "hydra.sweeper.n_trials=2",
                          "tracking.enabled=false", f"hydra.sweep.dir={tmp_path / 'sweeps'}"])
    said = out.stdout + out.stderr
    assert out.returncode == 2
    assert "objective=eval_loss" in said and "data.num_eval=200" in said, said[-3000:]
    assert "Traceback" not in said
    assert not list((tmp_path / "sweeps").glob("*/trial_*"))


def test_a_trial_without_an_eval_split_is_refused_where_a_plain_run_falls_back_to_the_train_loss(monkeypatch):
    import pytest
    from conftest import compose_cfg

    from ftrun.config import ConfigError
    from ftrun.contract import OPTUNA_STORAGE_ENV
    from ftrun.data import check_stage_data

    cfg = compose_cfg(["data.num_eval=0"])
    check_stage_data(cfg)  # a plain run: warns and returns its final train loss
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, "sqlite:///x.db")
    with pytest.raises(ConfigError, match="needs an eval split in a sweep.*data.num_eval=200"):
        check_stage_data(cfg)
