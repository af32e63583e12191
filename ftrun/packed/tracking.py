"""One MLflow run per packed run, through ``MlflowClient``: K runs are open at once in one process, which MLflow's
fluent API (one active run per thread) cannot hold.

A packed run's MLflow run looks like its alone run's (:class:`ftrun.tracking.MlflowTracker`): the same params,
tags, parent (``FTRUN_MLFLOW_PARENT_RUN_ID``, :data:`ftrun.contract.MLFLOW_PARENT_RUN_ENV`), ``run_id`` file in the
run dir, per-step metrics under the same names, the result's metrics and the same artifacts; it is tagged
``packed=true``. It is created when the pack starts (the board shows it RUNNING) and its metrics are written when
the run leaves the pack.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional

from ftrun import contract as C

PACKED_TAG = "packed"


class PackedTracker:
    """The MLflow run of one packed run (:func:`make_packed_tracker`)."""

    def __init__(self, cfg, run_dir: Path, overrides: Optional[list] = None, parent: Optional[str] = None):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        from ftrun.config import flatten, to_container
        from ftrun.tracking import _param, _tags, experiment_id

        uri = cfg.tracking.uri or os.environ.get(C.MLFLOW_URI_ENV)
        self.client = MlflowClient(tracking_uri=uri) if uri else MlflowClient()
        experiment = experiment_id(self.client, cfg.tracking.experiment)
        tags = {**_tags(cfg, run_dir, overrides), PACKED_TAG: "true", C.TAG_RUN_NAME: str(cfg.name)}
        if parent:
            tags[C.TAG_PARENT] = parent
        run = self.client.create_run(experiment, run_name=str(cfg.name), tags=tags)
        self.run_id = run.info.run_id
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / C.RUN_ID_FILE).write_text(self.run_id)
        params = [Param(k, _param(v)) for k, v in flatten(to_container(cfg)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.cfg = cfg
        self._tag = RunTag

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        import time

        now = int(time.time() * 1000)
        clean = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(clean), 1000):
            self.client.log_batch(self.run_id, metrics=clean[i:i + 1000])

    def log_history(self, history: list) -> None:
        """The run's log history under the names the alone run's callback uses (train_loss, eval_loss ...)."""
        from ftrun.tracking import MlflowCallback

        for h in history:
            step = h.get("step")
            metrics = {new: h[old] for old, new in MlflowCallback.RENAME.items() if old in h}
            if "eval_loss" in h:
                metrics.update({k: v for k, v in h.items() if k.startswith("eval_") and not k.endswith(
                    ("_runtime", "_per_second"))})
                metrics["eval_perplexity"] = math.exp(min(h["eval_loss"], 50.0))
            if "loss" in h and not math.isfinite(float(h["loss"])):
                metrics["nonfinite_loss"] = 1.0
            self.log_metrics(metrics, step)

    def set_tags(self, tags: Dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifacts(self, run_dir: Path, model_dir: Optional[Path] = None) -> None:
        run_dir = Path(run_dir)
        for name in (C.RESOLVED_CONFIG, C.LOSS_PLOT, C.TRAINER_STATE):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        if model_dir is not None and self.cfg.tracking.log_model and Path(model_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(model_dir), artifact_path=C.MODEL_DIR)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def make_packed_tracker(cfg, run_dir: Path, overrides: Optional[list] = None) -> Optional[PackedTracker]:
    """The run's tracker, or None with ``tracking.enabled=false``."""
    if not cfg.tracking.enabled:
        return None
    return PackedTracker(cfg, run_dir, overrides, os.environ.get(C.MLFLOW_PARENT_RUN_ENV))
