"""The sweep's MLflow parent run: the study, sampler, pruner and search space as params, the best value and
trial counts kept current, and each trial's own run tagged with its Optuna outcome."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Optional

from ftrun.contract import (ATTR_MLFLOW_PARENT_RUN_ID, ATTR_OVERRIDES, ATTR_SURPLUS, PARENT_ID_FILE, RUN_ID_FILE,
                            TAG_FAIL_REASON, TAG_OBJECTIVES, TAG_OOM_RETRY, TAG_PARENT, TAG_PRUNED, TAG_RETRY_OF,
                            TAG_RUN_DIR, TAG_STORAGE, TAG_STUDY_NAME, TAG_SWEEP, TAG_TRIAL)
from sweeper.study import pruner_key, safe_url, sampler_name, set_study_attr

log = logging.getLogger("ftrun.sweeper")


class ParentRun:
    """The sweep's MLflow run: search space as params, best value and counts kept current."""

    def __init__(self, client, run_id: str, uri: str, experiment_id: str):
        self.client, self.run_id, self.uri, self.experiment_id = client, run_id, uri, experiment_id

    @classmethod
    def open(cls, s, study, founder: bool) -> "ParentRun":
        """The sweep's run (``s``: :class:`sweeper.settings.Settings`): the one the study names, else a new one
        (``founder``: this sweeper created the study)."""
        import mlflow
        from mlflow.tracking import MlflowClient

        from ftrun.tracking import experiment_id

        uri = s.tracking_uri() or mlflow.get_tracking_uri()
        client = MlflowClient(tracking_uri=uri)
        name = s.experiment
        exp_id = experiment_id(client, name)
        id_file = s.sweep_dir / PARENT_ID_FILE
        run_id = _shared_run_id(study, founder) or (id_file.read_text().strip() if id_file.is_file() else None)
        if run_id:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                log.info("MLflow: continuing sweep run %s", run_id)
                id_file.write_text(run_id)
                return cls(client, run_id, uri, exp_id)
            except Exception:
                run_id = None
        run = client.create_run(exp_id, run_name=s.study_name, tags={
            TAG_SWEEP: "true", TAG_STUDY_NAME: s.study_name, TAG_STORAGE: safe_url(s.storage_url),
            "sampler": sampler_name(s.conf.get("sampler", "tpe")), "pruner": pruner_key(s.pruner_spec),
            TAG_OBJECTIVES: ",".join(s.objectives), "directions": ",".join(s.directions),
            "sweep_dir": str(s.sweep_dir)})
        run_id = run.info.run_id
        id_file.write_text(run_id)

        set_study_attr(study, ATTR_MLFLOW_PARENT_RUN_ID, run_id)
        params = {f"space.{k}": v[:6000] for k, v in s.space.describe().items()}
        # a '+key=value' / '~key' override is a valid Hydra override but not a valid MLflow param name
        params.update({f"fixed.{k.lstrip('+~')}": str(v)[:6000] for k, v in s.space.fixed.items()})
        params.update({"n_trials": str(s.n_trials), "n_jobs": str(s.conf.get("n_jobs", 1)),
                       "sampler_spec": json.dumps(s.conf.get("sampler"), default=str),
                       "pruner_spec": json.dumps(s.pruner_spec, default=str)})
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        log.info("MLflow: sweep run %s in experiment '%s' at %s", run_id, name, uri)
        return cls(client, run_id, uri, exp_id)

    def tag_child(self, trial_dir: Path, trial, state: str, reason: Optional[str], overrides=None,
                  oom_retry: bool = False, end_run: bool = True, extra_tags: Optional[dict] = None,
                  end_status: Optional[str] = None) -> None:
        """Mark the trial's own MLflow run with its Optuna outcome (create one if the trial died first);
        ``end_status``: end the run with it (a paused trial's run, closed by the sweeper)."""
        try:
            id_file = Path(trial_dir) / RUN_ID_FILE
            tags = {TAG_TRIAL: str(trial.number), "optuna.state": state, "optuna.study_parent": self.run_id,
                    **(extra_tags or {})}
            if reason:
                tags[TAG_FAIL_REASON] = reason[:5000]
            if state == "PRUNED" and not (reason or "").startswith("diverged"):  # a diverged run says so itself
                tags[TAG_PRUNED] = "true"
            if oom_retry:
                tags[TAG_OOM_RETRY] = "true"
            retry_of = trial.user_attrs.get(TAG_RETRY_OF)
            if retry_of is not None:
                tags[TAG_RETRY_OF] = str(retry_of)
            run_id = id_file.read_text().strip() if id_file.is_file() else self._find_child(trial_dir)
            if run_id:
                for k, v in tags.items():
                    self.client.set_tag(run_id, k, v)
                if state == "FAIL" and end_run and self.client.get_run(run_id).info.status == "RUNNING":
                    self.client.set_terminated(run_id, "FAILED")
                elif end_status:
                    self.client.set_terminated(run_id, end_status)
            elif state == "FAIL":
                run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}",
                                             tags={TAG_PARENT: self.run_id, **tags})
                from mlflow.entities import Param

                params = [Param(k.lstrip("+~"), str(v)[:6000]) for k, v in
                          (o.split("=", 1) for o in (overrides or []) if "=" in o)]
                if params:
                    self.client.log_batch(run.info.run_id, params=params)
                self.client.set_terminated(run.info.run_id, "FAILED")
        except Exception as e:  # tracking trouble must not stop the sweep
            log.warning("MLflow: could not record trial %d: %s", trial.number, e)

    def _find_child(self, trial_dir: Path) -> Optional[str]:
        """The run a trial started, found on the tracking server (its directory may be on another host)."""
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`{TAG_PARENT}` = '{self.run_id}' and tags.`{TAG_RUN_DIR}` = '{Path(trial_dir)}'")
        return found[0].info.run_id if found else None

    def update(self, study, multi: bool) -> None:
        import optuna
        from mlflow.entities import Metric

        try:
            trials = [t for t in study.get_trials(deepcopy=False) if ATTR_SURPLUS not in t.user_attrs]
            states = [t.state for t in trials]
            TS = optuna.trial.TrialState
            n_done = sum(s in (TS.COMPLETE, TS.PRUNED, TS.FAIL) for s in states)
            now = int(time.time() * 1000)
            metrics = [Metric("n_complete", states.count(TS.COMPLETE), now, n_done),
                       Metric("n_pruned", states.count(TS.PRUNED), now, n_done),
                       Metric("n_failed", states.count(TS.FAIL), now, n_done)]
            if TS.COMPLETE in states:
                if multi:
                    front = [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
                    self.client.set_tag(self.run_id, "pareto_front", json.dumps(front, default=str)[:5000])
                else:
                    best = study.best_trial
                    metrics.append(Metric("best_value", best.value, now, n_done))
                    self.client.set_tag(self.run_id, "best_trial", str(best.number))
                    self.client.set_tag(self.run_id, "best_params", json.dumps(best.params, default=str)[:5000])
                    rerun = shlex.join(["python", "-m", "ftrun", *best.user_attrs.get(ATTR_OVERRIDES, [])])
                    self.client.set_tag(self.run_id, "best_rerun", rerun[:5000])
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:
            log.warning("MLflow: could not update the sweep run: %s", e)

    def finish(self, status: str, summary_path: Optional[Path], close: bool = True) -> None:
        """Attach the summary; end the run unless sweepers on other hosts still run trials (``close``)."""
        try:
            if summary_path is not None:
                self.client.log_artifact(self.run_id, str(summary_path))
            if close:
                self.client.set_terminated(self.run_id, status)
            else:
                log.info("MLflow: sweep run %s stays open for the sweepers still running trials", self.run_id)
        except Exception as e:
            log.warning("MLflow: could not close the sweep run: %s", e)


def _shared_run_id(study, founder: bool, wait_s: float = 60.0) -> Optional[str]:
    """The parent run that the study names (set by the sweeper that created the study), so that sweepers
    on several hosts log under one run. A sweeper that joined a study another one has just created
    waits (up to ``wait_s``) for that one to record its run rather than starting a second parent."""
    deadline = time.time() + wait_s
    while True:
        run_id = study.user_attrs.get(ATTR_MLFLOW_PARENT_RUN_ID)
        # trials but no run: the study ran without tracking, nothing to wait for
        if run_id or founder or time.time() >= deadline or study.get_trials(deepcopy=False):
            return run_id
        time.sleep(0.5)  # the founder is between creating the study and creating its run
