"""A real small sweep for the analysis tests: an Optuna study in sqlite whose trials are tiny
ftrun runs, nested under one parent run in a sqlite MLflow store.

Five trials (about 5-10 s each on CPU), in order: two complete start-up trials, one with a
learning rate far too low that the median pruner stops at its first evaluation, one that
fails mid-training (a simulated out-of-memory error), and one more complete trial.
The objective reports eval_loss at each evaluation, as the sweeper's pruning callback does,
and tags pruned runs ``pruned=true``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

STUDY = "lora_search"
EXPERIMENT = "analysis-test"
STEPS = ["data.num_train=64", "data.num_eval=32", "max_steps=12", "batch_size=8",
         "train.logging_steps=2", "train.eval_steps=3", "train.save_steps=0"]
ENQUEUED = [
    {"lr": 3e-3, "rank": 8},
    {"lr": 1e-3, "rank": 4},
    {"lr": 1.2e-4, "rank": 4},   # far too low: pruned at its first evaluation
    {"lr": 2e-3, "rank": 8},     # fails at step 4 (simulated OOM)
    {"lr": 8e-3, "rank": 8},
]
FAIL_TRIAL = 3


@dataclass
class Sweep:
    root: Path
    tracking_uri: str
    storage: str
    study_name: str
    parent_run_id: str
    run_ids: Dict[int, str]  # trial number -> MLflow run id
    overrides: Dict[int, List[str]]


def build(root: Path, compose_cfg) -> Sweep:
    """Run the sweep into ``root`` (MLFLOW_TRACKING_URI must already point at root/mlflow.db)."""
    import optuna
    from mlflow.tracking import MlflowClient
    from transformers import TrainerCallback

    import ftrun.train as train

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    storage = f"sqlite:///{root / 'study.db'}"
    parent = client.create_run(exp_id, run_name=STUDY, tags={"study_name": STUDY, "storage": storage})
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for params in ENQUEUED:
        study.enqueue_trial(params)

    class Report(TrainerCallback):
        """What the sweeper's pruning callback does: report, ask, stop."""

        def __init__(self, trial):
            self.trial, self.pruned = trial, False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step >= args.max_steps or self.pruned:
                return  # the final evaluation is the objective, not an intermediate value
            self.trial.report(metrics["eval_loss"], state.global_step)
            if self.trial.should_prune():
                self.pruned = True
                control.should_training_stop = True

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise RuntimeError("CUDA out of memory (simulated)")

    run_ids, overrides_of = {}, {}
    original = train.build_trainer

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        rank = trial.suggest_categorical("rank", [4, 8])
        overrides = [*STEPS, f"lr={lr!r}", f"rank={rank}", f"alpha={2 * rank}",
                     f"tracking.experiment={EXPERIMENT}", f"output_root={root / 'outputs'}"]
        reporter = Report(trial)
        extra = [reporter] + ([Crash()] if trial.number == FAIL_TRIAL else [])

        def build_trainer(*args, callbacks=(), **kwargs):
            return original(*args, callbacks=[*callbacks, *extra], **kwargs)

        run_dir = root / "runs" / f"trial{trial.number}"
        train.build_trainer = build_trainer
        os.environ["FTRUN_MLFLOW_PARENT_RUN_ID"] = parent.info.run_id
        try:
            value = train.run(compose_cfg(overrides), run_dir, overrides=overrides)
        finally:
            train.build_trainer = original
            os.environ.pop("FTRUN_MLFLOW_PARENT_RUN_ID", None)
            run_id = (run_dir / "mlflow_run_id").read_text().strip()  # the tracker started before training
            run_ids[trial.number], overrides_of[trial.number] = run_id, overrides
            client.set_tag(run_id, "trial_number", str(trial.number))
            trial.set_user_attr("mlflow_run_id", run_id)
        if reporter.pruned:
            client.set_tag(run_id, "pruned", "true")
            raise optuna.TrialPruned()
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=len(ENQUEUED), catch=(RuntimeError,))
    client.set_terminated(parent.info.run_id)
    return Sweep(root, uri, storage, STUDY, parent.info.run_id, run_ids, overrides_of)
