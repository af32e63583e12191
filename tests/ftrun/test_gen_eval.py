"""Generative evaluation during training: prompts cut from the tokenized eval rows, ROUGE/BLEU/exact match
logged at every evaluation, the best checkpoint by them kept and loaded by predict; and the checks."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg

from ftrun.config import ConfigError, validate
from ftrun.gen_eval import prompts_and_answers

X = -100


def test_the_prompt_is_everything_before_the_last_trained_span():
    from datasets import Dataset

    ds = Dataset.from_dict({
        "input_ids": [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3], [1, 2]],
        "labels": [[X, X, X, 4, 5, 6],  # one answer
                   [X, X, 3, 4, X, X, 7, 8],  # two assistant turns: the last one is generated
                   [X, X, X],  # nothing trained: skipped
                   [1, 2]],  # train_on_prompt: no border, skipped
    })
    assert prompts_and_answers(ds, 8) == [([1, 2, 3], [4, 5, 6]), ([1, 2, 3, 4, 5, 6], [7, 8])]
    assert prompts_and_answers(ds, 1) == [([1, 2, 3], [4, 5, 6])]


GEN_RUN = ["max_steps=24", "train.eval_steps=8", "train.generate.max_samples=12", "train.generate.max_new_tokens=12",
           "objective=eval_rouge_l", "data.num_train=160", "data.num_eval=24", "batch_size=8", "lr=3e-3",
           "scheduler=constant", "train.logging_steps=4"]


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_dir):
    from ftrun.train import run

    tmp = tmp_path_factory.mktemp("gen")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = compose_cfg([*GEN_RUN, f"tracking.uri={uri}"])
    objective = run(cfg, tmp / "run")
    return tmp / "run", uri, objective


def test_generated_scores_are_logged_at_every_evaluation_and_the_best_checkpoint_is_the_model(gen_run):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    run_dir, uri, objective = gen_run
    client = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    history = {m.step: m.value for m in client.get_metric_history(run_id, "eval_rouge_l")}
    assert sorted(history) == [8, 16, 24]  # step-wise, at each evaluation
    for name in ("eval_bleu4", "eval_rouge1", "eval_rouge2", "eval_gen_exact_match"):
        assert len(client.get_metric_history(run_id, name)) >= 3, name

    result = json.loads((run_dir / "result.json").read_text())
    best = max(history, key=lambda s: (history[s], -s))  # the first of equal bests, as the Trainer keeps it
    assert result["best_step"] == best
    assert objective == pytest.approx(history[best]) == pytest.approx(result["objective"])
    assert result["eval_rouge_l"] == pytest.approx(history[best])  # the reported metrics are the best one's

    # the model directory (what export, predict and chat load) holds the best checkpoint's weights; the
    # best checkpoint survives save_total_limit (2) beside the last one
    model = load_file(run_dir / "model" / "adapter_model.safetensors")
    kept = load_file(run_dir / f"checkpoint-{best}" / "adapter_model.safetensors")
    assert model.keys() == kept.keys() and all((model[k] == kept[k]).all() for k in model)
    assert (run_dir / "checkpoint-24").is_dir()
    if best != 24:
        last = load_file(run_dir / "checkpoint-24" / "adapter_model.safetensors")
        assert any((model[k] != last[k]).any() for k in model)


def test_predict_loads_the_best_checkpoint_by_default(gen_run, tmp_path):
    from ftrun.generate import GenSettings
    from ftrun.predict import PredictArgs, predict

    run_dir, uri, objective = gen_run
    metrics = predict(PredictArgs(run=str(run_dir), max_samples=12, out=str(tmp_path / "p"), mlflow=False,
                                  gen=GenSettings(max_new_tokens=12)))
    # the same 12 eval rows, greedy, through the chat template instead of the token ids: the same answers
    # up to a near-tie that left padding flips (one row of 12)
    assert abs(metrics["predict_rouge_l"] - objective) <= 100 / 12 + 1e-6


@pytest.mark.parametrize("overrides, key, fix", [
    (["objective=eval_rouge_l"], "train.generate.max_samples", "train.generate.max_samples=32"),
    (["objective=eval_bleu4", "train.generate.max_samples=8", "data.num_eval=0"], "data.val_size", "data.val_size=0.1"),
    (["objective=eval_rouge_l", "train.generate.max_samples=8", "data.train_on_prompt=true"], "data.train_on_prompt",
     "data.train_on_prompt=false"),
    (["stage=dpo", "train.generate.max_samples=8"], "train.generate.max_samples", "stage=sft"),
    (["stage=ppo", "train.keep_best=true"], "train.keep_best", "train.keep_best=false"),
    (["objective=eval_rouge1", "train.generate.max_samples=8", "train.eval_steps=0"], "train.eval_steps",
     "train.eval_steps > 0"),
    (["objective=eval_rouge_l", "train.generate.max_samples=-1"], "train.generate.max_samples", ">= 0"),
])
def test_mistakes_name_the_override_to_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides))
    assert key in str(e.value) and fix in str(e.value)


def test_keep_best_turns_on_checkpoints_at_every_evaluation(tmp_path):
    from ftrun.config import resolved
    from ftrun.fit import training_arguments

    on = training_arguments(resolved(compose_cfg(GEN_RUN)), tmp_path)
    assert on.load_best_model_at_end and on.metric_for_best_model == "eval_rouge_l" and on.greater_is_better
    assert on.save_steps == on.eval_steps == 8
    loss = training_arguments(resolved(compose_cfg(["train.keep_best=true", "objective=eval_perplexity"])), tmp_path)
    assert loss.metric_for_best_model == "eval_loss" and not loss.greater_is_better
    off = training_arguments(resolved(compose_cfg([])), tmp_path)  # eval_loss objective: the last weights, as before
    assert not off.load_best_model_at_end
