"""Tracking: every run is an MLflow run.

:class:`MlflowTracker` starts (or, on resume, re-opens) the run, logs the
flattened config as params and the run's tags, and gives the Trainer a callback
that logs train loss, learning rate, grad norm and tokens/s at each logging
step, and eval loss, perplexity and exact match at each evaluation. At the end
it logs train time, peak memory and the artifacts (resolved config, loss plot,
trainer state, optionally the weights). :class:`NullTracker` has the same
methods and does nothing (``tracking.enabled=false``).

A sweep passes ``FTRUN_MLFLOW_PARENT_RUN_ID`` (:data:`ftrun.contract.MLFLOW_PARENT_RUN_ENV`) so each
trial is a nested child run.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

from ftrun import contract as C
from ftrun.config import flatten, to_container
from ftrun.signals import deferred
from ftrun.unused_libraries import hidden_now, unhide

log = logging.getLogger(__name__)


def experiment_id(client, name: str) -> str:
    """The id of MLflow experiment ``name`` (``client``: an ``MlflowClient``), created if missing. Several sweep hosts
    start at once against one tracking server: the one whose create loses the race reads the winner's experiment."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


class NullTracker:
    """Does nothing, with the tracker's signatures (so ``run`` needs no branches)."""

    run_id: Optional[str] = None

    def callback(self):
        return None

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        pass

    def log_artifacts(self, run_dir: Path, model_dir: Optional[Path] = None) -> None:
        pass

    def set_tags(self, tags: Dict[str, str]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


def _artifact_libraries(location: str) -> None:
    """Give back boto3 where the run hid it (:mod:`ftrun.unused_libraries`) and the experiment's artifacts live in
    a remote store (``s3://``, ...), which MLflow reaches through it."""
    if "://" in location and not location.startswith(("file:", "mlflow-artifacts:")):
        if unhide("boto3"):
            log.info("MLflow: artifacts go to %s; boto3 is imported for them", location)


class MlflowTracker(NullTracker):
    def __init__(self, cfg, run_dir: Path, overrides: Optional[list] = None):
        import mlflow

        self.mlflow = mlflow
        # tracking.uri, else MLFLOW_TRACKING_URI; set explicitly so that a URI some earlier code in
        # this process set globally (mlflow.set_tracking_uri) cannot redirect this run
        uri = cfg.tracking.uri or os.environ.get(C.MLFLOW_URI_ENV)
        if uri:
            mlflow.set_tracking_uri(uri)
        with deferred():  # a stop while the run starts comes once it has started (then ends KILLED)
            experiment = experiment_id(mlflow.MlflowClient(), cfg.tracking.experiment)
            mlflow.set_experiment(experiment_id=experiment)
            if "boto3" in hidden_now():  # one query more only where the answer can matter
                _artifact_libraries(mlflow.MlflowClient().get_experiment(experiment).artifact_location)
            id_file = Path(run_dir) / C.RUN_ID_FILE
            resumed_id = id_file.read_text().strip() if id_file.is_file() else None
            if resumed_id:
                mlflow.start_run(run_id=resumed_id)
                log.info("MLflow: continuing run %s", resumed_id)
            else:
                parent = os.environ.get(C.MLFLOW_PARENT_RUN_ENV)
                tags = {C.TAG_PARENT: parent} if parent else {}
                mlflow.start_run(run_name=cfg.name, tags=tags)
                id_file.parent.mkdir(parents=True, exist_ok=True)
                id_file.write_text(mlflow.active_run().info.run_id)
                params = {k: _param(v) for k, v in flatten(to_container(cfg)).items()}
                items = list(params.items())
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    mlflow.log_params(dict(items[i:i + 100]))
                mlflow.set_tags(_tags(cfg, run_dir, overrides))
            self.run_id = mlflow.active_run().info.run_id
            log.info("MLflow: run %s (%s) in experiment '%s' at %s",
                     cfg.name, self.run_id, cfg.tracking.experiment, mlflow.get_tracking_uri())
        self.cfg = cfg

    def callback(self):
        return MlflowCallback(self)

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if clean:
            with deferred():
                self.mlflow.log_metrics(clean, step=step)

    def log_artifacts(self, run_dir: Path, model_dir: Optional[Path] = None) -> None:

        from omegaconf import OmegaConf

        run_dir = Path(run_dir)
        (run_dir / C.RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(to_container(self.cfg)))
        with deferred():
            self.mlflow.log_artifact(str(run_dir / C.RESOLVED_CONFIG))
            for name in (C.LOSS_PLOT, C.TRAINER_STATE):
                if (run_dir / name).is_file():
                    self.mlflow.log_artifact(str(run_dir / name))
            if model_dir is not None and self.cfg.tracking.log_model:
                self.mlflow.log_artifacts(str(model_dir), artifact_path=C.MODEL_DIR)

    def set_tags(self, tags: Dict[str, str]) -> None:
        with deferred():
            self.mlflow.set_tags(tags)

    def finish(self, status: str = "FINISHED") -> None:
        with deferred():  # a second signal while the run ends is raised after it has ended
            self.mlflow.end_run(status=status)


def end_interrupted_run(reason: str) -> None:
    """Record the MLflow run this process left open as KILLED, with ``reason`` (a run stopped before its
    tracker finished it); nothing when MLflow was never imported or no run is open."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.set_tag(C.TAG_FAIL_REASON, reason)
        mlflow.end_run(status="KILLED")


def make_tracker(cfg, run_dir: Path, overrides: Optional[list] = None):
    """The MLflow tracker, or a do-nothing one when tracking is off or on a non-zero rank."""
    from ftrun.config import is_main_process

    if cfg.tracking.enabled and is_main_process():
        return MlflowTracker(cfg, run_dir, overrides)
    return NullTracker()


def _param(value) -> str:
    s = str(value)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _tags(cfg, run_dir: Path, overrides: Optional[list]) -> Dict[str, str]:
    tags = {
        C.TAG_METHOD: str(cfg.method.name),
        C.TAG_MODEL: str(cfg.model.name),
        C.TAG_STAGE: str(cfg.stage.name),
        C.TAG_DATA: str(cfg.data.name),
        C.TAG_RUN_DIR: str(Path(run_dir).resolve()),
        C.TAG_OVERRIDES: " ".join(overrides or []),
    }
    commit = _git_commit()
    if commit:
        tags[C.TAG_GIT_COMMIT] = commit
    return tags


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MlflowCallback(_callback_base()):
    """Per-step metrics from the Trainer's logs to MLflow, under names a user reads."""

    RENAME = {"loss": "train_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}

    def __init__(self, tracker: MlflowTracker):
        self.tracker = tracker
        self._last = None  # (time, tokens seen) at the previous train log

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {}
        if "loss" in logs:
            metrics = {new: logs[old] for old, new in self.RENAME.items() if old in logs}
            # MLflow gets only finite values; keep a marker so analysis can still see a divergence
            if any(isinstance(logs.get(k), float) and not math.isfinite(logs[k]) for k in ("loss", "grad_norm")):
                metrics["nonfinite_loss"] = 1.0
            now, seen = time.perf_counter(), state.num_input_tokens_seen
            if seen:
                metrics["tokens_seen"] = seen
            if self._last is not None and now > self._last[0] and seen > self._last[1]:
                metrics["tokens_per_second"] = (seen - self._last[1]) / (now - self._last[0])
            self._last = (now, seen)
        if "eval_loss" in logs:
            metrics.update({k: v for k, v in logs.items() if k.startswith("eval_") and not k.endswith(
                ("_runtime", "_per_second", "preparation_time"))})
            metrics["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        self.tracker.log_metrics(metrics, step=state.global_step)
