"""Diagnostics fire on constructed curves and studies that show the problem, with the numbers
as evidence, and stay quiet on healthy ones; compare shows them for runs in a real MLflow store."""

from __future__ import annotations

import csv
import io
import math

import optuna
import pytest

from analysis import diagnostics as d
from analysis.__main__ import main

# ---------------------------------------------------------------------------
# constructed curves (step, value)


def healthy():
    train = [(s, 1.0 + 2.0 * math.exp(-s / 50) + 0.03 * math.sin(s)) for s in range(10, 310, 10)]
    evals = [(s, 1.1 + 2.0 * math.exp(-s / 50)) for s in range(50, 310, 50)]
    return train, evals


def overfit():
    train = [(s, 3.0 - 0.008 * s) for s in range(10, 310, 10)]  # keeps falling
    evals = [(50, 2.6), (100, 2.3), (150, 2.2), (200, 2.3), (250, 2.45), (300, 2.6)]  # rises 3 evals in a row
    return train, evals


def spike():
    train, evals = healthy()
    train[15] = (train[15][0], 3.5 * train[15][1])
    return train, evals


def undertrained():
    train = [(s, 3.0 - 0.006 * s) for s in range(10, 310, 10)]  # still falling steeply at the end
    evals = [(s, 3.1 - 0.006 * s) for s in range(50, 310, 50)]
    return train, evals


def test_healthy_run_has_no_flags():
    train, evals = healthy()
    assert d.diagnose_run({"train_loss": train, "eval_loss": evals}) == []


def test_overfitting_with_evidence():
    train, evals = overfit()
    flag = d.overfitting(train, evals)
    assert flag is not None and flag.kind == "overfitting"
    # the evidence names the rise, the steps, and where the best eval was
    assert "2.2 -> 2.6" in flag.evidence and "steps 150-300" in flag.evidence and "step 150" in flag.evidence
    assert "step 150" in flag.advice
    # two rising evaluations are not enough
    assert d.overfitting(train, evals[:5]) is None
    # eval rising while train rises too is not overfitting (that is divergence's business)
    assert d.overfitting([(s, 1 + 0.01 * s) for s, _ in train], evals) is None


def test_divergence_spike_nan_and_ending_above_start():
    train, _ = spike()
    flag = d.divergence(train)
    assert flag.kind == "divergence" and "spiked" in flag.evidence and "step 160" in flag.evidence
    assert "diverged at step 40" in d.divergence(train[:5], nonfinite=[(40, 1.0)]).evidence
    assert "non-finite" in d.divergence([(1, 2.0), (2, float("nan"))]).evidence
    rising = [(s, 2.0 + 0.05 * s) for s in range(1, 12)]
    assert "above its start" in d.divergence(rising).evidence
    assert d.divergence(healthy()[0]) is None


def test_under_training_with_evidence():
    train, evals = undertrained()
    flag = d.under_training(train, evals)
    assert flag.kind == "under-training" and "%" in flag.evidence and "best at the last evaluation" in flag.evidence
    assert d.under_training(*healthy()) is None
    # still falling, but the eval loss is already past its best: more steps would not help
    assert d.under_training(train, overfit()[1]) is None


def test_a_diverged_or_failed_run_is_not_called_under_trained():
    train, evals = undertrained()
    assert [f.kind for f in d.diagnose_run({"train_loss": train, "eval_loss": evals}, failed=True)] == []
    kinds = [f.kind for f in d.diagnose_run({"train_loss": train, "eval_loss": evals,
                                             "nonfinite_loss": [(300, 1.0)]})]
    assert kinds == ["divergence"]


# ---------------------------------------------------------------------------
# range edges on constructed studies


def _study(best_lr: float, n: int = 24, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        trial.suggest_int("rank", 4, 64)  # does not matter
        return (math.log10(lr) - math.log10(best_lr)) ** 2

    study.optimize(objective, n_trials=n)
    return study


def test_range_edge_fires_when_the_optimum_is_beyond_the_range():
    flags = d.range_edges(_study(best_lr=1e-1))  # the optimum lies above the searched range
    assert [(f.kind, f.subject) for f in flags] == [("range-edge", "lr")]
    assert "upper edge" in flags[0].evidence and "widen the range above 0.01" in flags[0].advice
    low = d.range_edges(_study(best_lr=1e-7))
    assert [f.subject for f in low] == ["lr"] and "lower edge" in low[0].evidence


def test_range_edge_quiet_for_an_interior_optimum():
    assert d.range_edges(_study(best_lr=3e-4)) == []


# ---------------------------------------------------------------------------
# in compare, from a real MLflow store


def _log_run(client, exp_id, name, lr, train, evals, **tags):
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=name, tags={"method": "lora", **tags})
    metrics = [Metric("train_loss", v, 0, int(s)) for s, v in train if math.isfinite(v)]
    metrics += [Metric("eval_loss", v, 0, int(s)) for s, v in evals]
    metrics += [Metric("learning_rate", lr, 0, int(s)) for s, _ in train]
    metrics += [Metric("tokens_seen", 100.0 * s, 0, int(s)) for s, _ in train]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param("lr", str(lr)), Param("rank", "16")])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture()
def constructed(mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("constructed")
    ids = {
        "healthy": _log_run(client, exp, "healthy", 1e-4, *healthy()),
        "overfit": _log_run(client, exp, "overfit", 3e-4, *overfit()),
        "spike": _log_run(client, exp, "spike", 1e-3, *spike()),
        "undertrained": _log_run(client, exp, "undertrained", 1e-5, *undertrained()),
    }
    return mlflow_uri, ids


def test_compare_shows_flags_and_evidence(constructed, capsys):
    uri, ids = constructed
    assert main(["--tracking-uri", uri, "compare", "--experiment", "constructed", "--format", "csv"]) == 0
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["healthy"]["flags"] == "" and rows["healthy"]["diagnostics"] == ""
    assert rows["overfit"]["flags"] == "overfitting" and "eval_loss rose" in rows["overfit"]["diagnostics"]
    assert rows["spike"]["flags"] == "divergence" and "spiked" in rows["spike"]["diagnostics"]
    assert rows["undertrained"]["flags"] == "under-training"
    assert main(["--tracking-uri", uri, "compare", "--experiment", "constructed"]) == 0
    text = capsys.readouterr().out
    assert "Diagnostics:" in text and f"{ids['overfit'][:8]} overfit: overfitting: eval_loss rose" in text
    assert ids["healthy"][:8] + " healthy:" not in text


def test_a_real_diverging_run_is_flagged(mlflow_uri, tiny_dir, tmp_path, capsys):
    """lr=50 without clipping: the loss explodes (NaN, or finite and 10,000x, by the CPU's kernels) and the run
    stops (ftrun.divergence); MLflow drops non-finite values, but the marker survives and compare shows it."""
    from conftest import compose_cfg

    from ftrun.divergence import Diverged
    from ftrun.train import run

    overrides = ["method=full", "lr=50", "optimizer.max_grad_norm=0", "max_steps=6", "train.logging_steps=1",
                 "train.eval_steps=0"]
    with pytest.raises(Diverged):
        run(compose_cfg(overrides, fast=True), tmp_path / "run", overrides=overrides)
    capsys.readouterr()  # the Trainer's own log lines
    assert main(["--tracking-uri", mlflow_uri, "compare", "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["flags"] == "divergence, failed"  # the run stopped: its MLflow run is FAILED
    assert "diverged at step" in row["diagnostics"] and "ftrun.divergence" in row["diagnostics"]
