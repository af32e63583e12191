"""Each stage trains a few steps on CPU with the tiny model, and its metric moves the right way.

The built-in preference pairs have an obvious pattern (the rejected answer is
another instruction's answer in capitals), so a few steps are enough for the
reward model and DPO to prefer the chosen answers on held-out pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg

from ftrun.config import ConfigError
from ftrun.train import run

FAST_STAGE = ["tracking.enabled=false", "cutoff_len=64"]


def train(tmp_path, overrides, name="run"):
    run_dir = tmp_path / name
    objective = run(compose_cfg([*FAST_STAGE, *overrides], fast=True), run_dir)
    return objective, json.loads((run_dir / "result.json").read_text()), run_dir


def evals(run_dir, key):
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


@pytest.fixture(scope="module")
def rm_run(tiny_dir, tmp_path_factory):
    """A LoRA reward model on the built-in pairs, shared by the rm and ppo tests."""
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    objective = run(compose_cfg([*FAST_STAGE, "stage=rm", "lr=3e-3", "max_steps=8"], fast=True), run_dir)
    return objective, run_dir


def test_pt_lowers_eval_loss_on_packed_text(tiny_dir, tmp_path):
    objective, result, run_dir = train(tmp_path, ["stage=pt"])
    losses = evals(run_dir, "eval_loss")
    assert objective == result["eval_loss"] == losses[-1] < losses[0]
    assert result["eval_perplexity"] > 1


def test_rm_orders_eval_pairs(rm_run):
    objective, run_dir = rm_run
    result = json.loads((run_dir / "result.json").read_text())
    assert objective == result["eval_accuracy"] > 0.5
    margins = evals(run_dir, "eval_margin")
    assert margins[-1] > margins[0] and margins[-1] > 0
    adapter = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"  # the score head is saved with the adapter


def test_dpo_lora_reward_accuracy_rises(tiny_dir, tmp_path, mlflow_uri):
    objective, result, run_dir = train(tmp_path, ["stage=dpo", "tracking.enabled=true"])
    assert objective == result["eval_rewards/accuracies"] > 0.5
    assert result["eval_rewards/margins"] > 0
    # reference = the base with the adapter disabled: no second adapter and no second model was made
    assert sorted(p.name for p in (run_dir / "model").iterdir() if p.is_dir()) == []
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    (found,) = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    assert found.data.tags["stage"] == "dpo"
    assert found.data.metrics["eval_rewards/accuracies"] > 0.5
    assert {"rewards/accuracies", "rewards/margins", "objective"} <= set(found.data.metrics)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_dpo_other_methods(tiny_dir, tmp_path, method):
    objective, result, _ = train(tmp_path, ["stage=dpo", f"method={method}", "max_steps=3", "train.eval_steps=0"])
    assert 0 <= objective <= 1 and result["global_step"] == 3


def test_kto_separates_good_from_bad(tiny_dir, tmp_path):
    objective, result, _ = train(tmp_path, ["stage=kto", "train.eval_steps=0"])
    assert objective == result["eval_rewards/margins"] > 0


def test_ppo_against_the_rm_run(rm_run, tmp_path, mlflow_uri):
    _, rm_dir = rm_run
    objective, result, run_dir = train(tmp_path, [
        "stage=ppo", f"stage.reward_run={rm_dir}", "tracking.enabled=true", "max_steps=4", "batch_size=4",
        "stage.ppo.num_generations=2", "stage.ppo.max_new_tokens=8", "train.logging_steps=1",
    ])
    assert objective == result["reward_mean"]
    assert result["reward_mean"] > result["reward_start"]  # the policy learns what the reward model likes
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    (found,) = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    history = {key: client.get_metric_history(found.info.run_id, key) for key in ("reward", "kl", "policy_loss")}
    assert all(len(h) == 4 for h in history.values())


def test_bad_pairs_fail_before_the_model_loads(tiny_dir, tmp_path, monkeypatch):
    import ftrun.model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(ftrun.model, "load_model", no_model)
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"instruction": "q", "chosen": "a", "rejected": "b"}\n{"instruction": "q", "chosen": "a"}\n')
    for stage in ("rm", "dpo", "kto"):
        cfg = compose_cfg([*FAST_STAGE, f"stage={stage}", "data=alpaca", f"data.path={bad}", "data.strict=true"],
                          fast=True)
        with pytest.raises(ConfigError, match=f"data.path={bad}: line 2 has no 'rejected' answer"):
            run(cfg, tmp_path / stage)


@pytest.mark.slow
def test_sft_then_dpo_from_its_mlflow_run_id(tiny_dir, tmp_path, mlflow_uri):
    """The sft -> dpo chain: dpo starts from the sft run (named by its MLflow run id), LoRA merged."""
    import mlflow

    _, _, sft_dir = train(tmp_path, ["tracking.enabled=true"], name="sft")
    sft_id = (sft_dir / "mlflow_run_id").read_text().strip()
    objective, result, dpo_dir = train(tmp_path, ["stage=dpo", f"stage.init_run={sft_id}"], name="dpo")
    assert objective > 0.5
    assert (dpo_dir / "init_model" / "config.json").is_file()  # the sft adapter merged into the base once
    assert mlflow.get_run(sft_id).data.tags["stage"] == "sft"


def test_run_name_directory_resolves_to_its_newest_finished_run(tmp_path):
    from ftrun.saved_runs import resolve_run_dir

    for stamp in ("2026-01-01_00-00-00", "2026-01-02_00-00-00", "2026-01-03_00-00-00"):
        (tmp_path / "rm-demo" / stamp).mkdir(parents=True)
    for stamp in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):  # the newest one has not finished
        (tmp_path / "rm-demo" / stamp / "model").mkdir()
    assert resolve_run_dir(str(tmp_path / "rm-demo"), key="stage.reward_run").name == "2026-01-02_00-00-00"
    with pytest.raises(ConfigError, match="stage.reward_run=0123456789abcdef0123456789abcdef: neither a run"):
        resolve_run_dir("0123456789abcdef0123456789abcdef", key="stage.reward_run")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "freeze", "qlora"])
@pytest.mark.parametrize("stage", ["pt", "rm", "kto", "ppo"])
def test_every_stage_with_every_method(tiny_dir, tmp_path, request, stage, method):
    extra = ["max_steps=2", "train.eval_steps=0"]
    if stage == "ppo":
        extra += [f"stage.reward_run={request.getfixturevalue('rm_run')[1]}", "batch_size=4", "stage.ppo.num_generations=2",
                  "stage.ppo.max_new_tokens=8"]
    objective, result, run_dir = train(tmp_path, [f"stage={stage}", f"method={method}", *extra])
    assert result["global_step"] == 2 and objective == objective  # finite, not NaN
    assert (run_dir / "model").is_dir()
