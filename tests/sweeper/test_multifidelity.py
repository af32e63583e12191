"""Multi-fidelity pruning with real trials: successive halving by name, evaluations keyed by the training
examples seen, so trials with different batch sizes meet at the same rungs."""

from __future__ import annotations

from pathlib import Path

import optuna

from sweeper_helpers import ftrun_multirun


def test_successive_halving_prunes_at_rungs_shared_by_batch_sizes(tmp_path):
    out = ftrun_multirun([
        "data.num_train=64", "data.num_eval=32", "epochs=1", "train.eval_examples=16", "train.save_steps=0",
        "train.logging_steps=4", "tracking.enabled=false", "lr=tag(log,interval(1e-5,1e-1))",
        "batch_size=choice(4,8)", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner={name:successive_halving,min_resource:16,reduction_factor:2}",
        "hydra.sweeper.enqueue=[{lr:3e-3,batch_size:8},{lr:2e-3,batch_size:4},{lr:1e-3,batch_size:8},"
        "{lr:1e-5,batch_size:4}]",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (db,) = (tmp_path / "sweeps").glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    trials = study.trials
    # batch 8 evaluates every 2 steps, batch 4 every 4: both after 16, 32, 48 examples
    for t in trials:
        assert set(t.intermediate_values) <= {16, 32, 48, 64}, (t.params, t.intermediate_values)
    assert {t.params["batch_size"] for t in trials if 16 in t.intermediate_values} == {4, 8}
    assert trials[0].state.name == "COMPLETE"  # the first trial has no one to lose to
    slow = trials[3]
    assert slow.params["lr"] == 1e-5 and slow.state.name == "PRUNED"
    assert max(slow.intermediate_values) < 64  # stopped at a rung, before the end of its data
