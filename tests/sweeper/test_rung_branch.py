"""Rung decay branches (hydra.sweeper.rung_branch): a branch leaves the trial it branches from bitwise unchanged,
the rung reports the branch's evaluation, a real sweep records the branches' steps, and bad settings exit 2."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from conftest import compose_cfg
from sweeper_helpers import ftrun_multirun

import ftrun.stages.sft
import sweeper.rung_branch
from ftrun.contract import (ATTR_BRANCH_STEPS, OPTUNA_PRUNER_ENV, OPTUNA_STORAGE_ENV, OPTUNA_STUDY_ENV,
                            OPTUNA_TRIAL_ID_ENV, OPTUNA_TRIAL_NUMBER_ENV, RESULT_FILE, RUNG_BRANCH_ENV)
from ftrun.train import run

# 6 steps of 2 x 4 examples (two passes over the data: the second's shuffle comes after two branches), evaluated
# every 2: rungs at 2 and 4 (branches of 1 and 2 steps at share 0.5), and the last step's at 6. NEFTune's noise
# draws from the torch RNG at every training step.
TRIAL_RUN = ["scheduler=wsd", "data.num_train=24", "data.num_eval=8", "train.neftune_noise_alpha=5", "max_steps=6",
             "train.eval_steps=2", "train.logging_steps=1", "grad_accum=2", "batch_size=4", "tracking.enabled=false"]
BUILD_TRAINER, RUN_BRANCH = ftrun.stages.sft.build_trainer, sweeper.rung_branch.run_branch  # before any patch


def _trial(monkeypatch, tmp_path, name: str, share=None, overrides=TRIAL_RUN):
    """Run ``overrides`` in process as trial 0 of a fresh study (median pruner: its first trial is never pruned),
    with the rung branch at ``share``; (the Trainer, result.json, the Optuna trial, the branches run)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    for key, value in {OPTUNA_STORAGE_ENV: storage, OPTUNA_STUDY_ENV: name, OPTUNA_TRIAL_ID_ENV: trial._trial_id,
                       OPTUNA_TRIAL_NUMBER_ENV: trial.number, OPTUNA_PRUNER_ENV: '"median"'}.items():
        monkeypatch.setenv(key, str(value))
    if share is None:
        monkeypatch.delenv(RUNG_BRANCH_ENV, raising=False)
    else:
        monkeypatch.setenv(RUNG_BRANCH_ENV, str(share))
    built, branches = [], []
    build, branch = BUILD_TRAINER, RUN_BRANCH
    monkeypatch.setattr(ftrun.stages.sft, "build_trainer", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    monkeypatch.setattr(sweeper.rung_branch, "run_branch", lambda *a, **k: branches.append(branch(*a, **k))
                        or branches[-1])
    run_dir = tmp_path / name
    run(compose_cfg(list(overrides), fast=True), run_dir)
    result = json.loads((run_dir / RESULT_FILE).read_text())
    return built[0], result, study.trials[0], branches


def _trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_a_branch_leaves_the_trial_bitwise_unchanged_and_its_evaluation_is_the_rungs_score(
        tiny_dir, tmp_path, monkeypatch):
    plain, plain_result, plain_trial, none = _trial(monkeypatch, tmp_path, "plain")
    branched, result, trial, branches = _trial(monkeypatch, tmp_path, "branched", share=0.5)
    assert none == [] and [b.steps for b in branches] == [1, 2]  # every rung but the last step branched

    # the trial went on exactly as without the branches: weights, every logged loss, every evaluation
    before, after = _trainable(plain), _trainable(branched)
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[n], after[n]) for n in before), [n for n in before
                                                                    if not torch.equal(before[n], after[n])]

    def logged(trainer, key):
        return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]

    assert logged(branched, "loss") == logged(plain, "loss") and len(logged(plain, "loss")) == 6
    assert logged(branched, "eval_loss") == logged(plain, "eval_loss")
    assert result["objective"] == plain_result["objective"]

    # each rung reported its branch's evaluation, not the stable phase's; the last step reports its own
    stable = [v for _, v in logged(plain, "eval_loss")]
    assert list(plain_trial.intermediate_values.values()) == stable
    reported = list(trial.intermediate_values.values())
    assert reported[:2] == [b.metrics["eval_loss"] for b in branches]
    assert all(r != s for r, s in zip(reported[:2], stable[:2])) and reported[2:] == stable[2:] and len(stable) == 3
    assert result[ATTR_BRANCH_STEPS] == 3 == trial.user_attrs[ATTR_BRANCH_STEPS]
    assert "branch" in result["phases_s"] and ATTR_BRANCH_STEPS not in plain_result


def test_the_branchs_evaluation_is_of_the_weights_after_its_decay(tiny_dir, tmp_path, monkeypatch):
    """Kept instead of restored, the branch's weights evaluate to what the branch reported; and its learning
    rate fell from the run's to 0 in the run's decay shape."""
    trainer, _, _, _ = _trial(monkeypatch, tmp_path, "plain", overrides=[
        "scheduler=constant", "max_steps=2", "data.num_eval=8", "train.eval_steps=0", "tracking.enabled=false"])
    lrs = []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: lrs.append(
        trainer.optimizer.param_groups[0]["lr"]) or step(*a, **k))
    monkeypatch.setattr(sweeper.rung_branch._Snapshot, "restore", lambda self, trainer: None)
    stable = trainer.evaluate()["eval_loss"]
    branch = sweeper.rung_branch.run_branch(trainer, share=1.0)
    assert branch.steps == 2 and len(lrs) == 2
    lr = trainer.args.learning_rate
    assert lrs[0] == lr and lrs == sorted(lrs, reverse=True) and lrs[-1] < lr  # cosine from lr towards 0
    assert sweeper.rung_branch.decay_factor({}, 2)(2) == 0.0  # where a third step would have been
    assert branch.metrics["eval_loss"] != stable
    assert trainer.evaluate()["eval_loss"] == branch.metrics["eval_loss"]


def test_a_sweep_with_rung_branches_records_their_steps(tiny_dir, tmp_path):
    out = ftrun_multirun([
        "scheduler=wsd", "data.num_train=32", "data.num_eval=8", "max_steps=4", "batch_size=8",
        "train.eval_steps=2", "train.save_steps=0", "tracking.enabled=false", "lr=choice(1e-3,3e-3)",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.rung_branch=0.2", "hydra.sweeper.pruner=hyperband",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweeps").glob(f"*/*/{RESULT_FILE}")]
    assert len(results) == 2
    assert all(r[ATTR_BRANCH_STEPS] == 1 for r in results), results  # one rung (step 2): at least 1 step
    summary = next((tmp_path / "sweeps").glob("*/summary.md")).read_text()
    assert "rung decay branches" in summary


@pytest.mark.parametrize(("args", "says"), [
    (["hydra.sweeper.rung_branch=1.5"], "hydra.sweeper.rung_branch=1.5: must be in (0, 1]"),
    (["hydra.sweeper.rung_branch=0"], "hydra.sweeper.rung_branch=0.0: must be in (0, 1]"),
    (["hydra.sweeper.rung_branch=0.2"], "hydra.sweeper.rung_branch=0.2: a decay branch starts from a stable phase"),
    (["hydra.sweeper.rung_branch=0.2", "scheduler=wsd", "hydra.sweeper.pruner=none"], "set hydra.sweeper.pruner="),
    (["sweep=auto", "hydra.sweeper.objectives=[eval_loss,train_time_s]"], "add hydra.sweeper.rung_branch=null"),
    (["hydra.sweeper.rung_branch=0.2", "scheduler=wsd", "hydra.sweeper.gpus_per_trial=2"],
     "set hydra.sweeper.gpus_per_trial=1"),
])
def test_rung_branch_settings_it_cannot_use_exit_2_naming_the_key(tmp_path, args, says):
    out = ftrun_multirun([*args, "lr=choice(1e-3,1e-2)", "tracking.enabled=false",
                          f"hydra.sweep.dir={tmp_path / 'sweeps'}"], timeout=120)
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-2000:]
    assert says in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "sweeps").glob("*/study.db"))  # refused before the study opened
