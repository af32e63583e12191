"""Reading runs from MLflow and studies from Optuna storage, and linking the two.

Conventions read here (written by ftrun's tracker and the sweeper):

* every ftrun run has the tags ``method``, ``model``, ``data``, ``overrides`` and
  the whole resolved config as params;
* a sweep trial is a child run (tag ``mlflow.parentRunId``) of one parent run per
  sweep (tags ``ftrun.sweep=true``, ``study_name``, ``storage``, ``objectives``);
  a pruned trial has the tag ``pruned=true``, a failed one ``fail_reason``;
* the study names its parent run in the user attribute ``mlflow_parent_run_id``;
* a trial is linked to its MLflow run by the trial's user attribute
  ``mlflow_run_id``, the ``mlflow_run_id`` file in its ``trial_dir``, or a
  trial-number tag on the child run (any of :data:`TRIAL_TAGS`).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ftrun import contract as C
from ftrun.config import RECORDING_KEYS

PARENT_TAG = C.TAG_PARENT
TRIAL_TAGS = (C.TAG_TRIAL, "trial_number", "optuna.trial_number", "optuna_trial_number", "trial")
STUDY_TAGS = (C.TAG_STUDY_NAME, "optuna.study_name", "optuna_study_name", "study")
STORAGE_TAGS = (C.TAG_STORAGE, "optuna.storage", "optuna_storage")
STATES = ("finished", "pruned", "failed", "running", "paused", "killed")
HISTORY_KEYS = ("train_loss", "eval_loss", "learning_rate", "grad_norm", "tokens_seen",
                "tokens_per_second", "nonfinite_loss", "eval_exact_match")
# params that say where or how a run was recorded, not what it trained
VOLATILE_PARAMS = RECORDING_KEYS


@dataclass
class RunRecord:
    """One MLflow run as the analysis commands use it."""

    run_id: str
    name: str
    experiment: str
    state: str  # one of STATES
    params: Dict[str, str]
    tags: Dict[str, str]
    metrics: Dict[str, float]  # latest value of each metric
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    histories: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.run_id[:8]


def client(tracking_uri: Optional[str] = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def run_state(run) -> str:
    """finished / pruned / failed / running / killed, with the sweeper's pruned tag first."""
    if str(run.data.tags.get(C.TAG_PRUNED, "")).lower() in ("true", "1", "yes"):
        return "pruned"
    if run.info.status == "SCHEDULED" and C.TAG_PAUSED_AT_STEP in run.data.tags:  # waits at a rung to be promoted
        return "paused"
    return {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running", "SCHEDULED": "running",
            "KILLED": "killed"}.get(run.info.status, run.info.status.lower())


def to_record(run, experiment_name: str = "") -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get(C.TAG_RUN_NAME, ""),
        experiment=experiment_name,
        state=run_state(run),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        start_time=run.info.start_time,
        end_time=run.info.end_time,
    )


def experiment_ids(c, names: Sequence[str] = ()) -> Dict[str, str]:
    """{id: name} for the named experiments (all experiments when none are named)."""
    if not names:
        return {e.experiment_id: e.name for e in c.search_experiments()}
    out = {}
    for name in names:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(e.name for e in c.search_experiments()) or "none"
            raise LookupError(f"no MLflow experiment named '{name}' (known: {known})")
        out[exp.experiment_id] = exp.name
    return out


def find_runs(c, experiments: Sequence[str] = (), sweep: Optional[str] = None,
              tags: Optional[Dict[str, str]] = None, states: Sequence[str] = (),
              include_parents: bool = False) -> List[RunRecord]:
    """Runs matching every filter given; sweep parents are left out unless asked for.

    ``sweep`` is a parent run id, or a study/run name that identifies the parent.
    """
    exps = experiment_ids(c, experiments)
    clauses = []
    if sweep:
        parent = find_parent_run(c, sweep, list(exps))
        if parent is None:
            raise LookupError(f"no sweep parent run with id or study/run name '{sweep}'")
        clauses.append(f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    for key, value in (tags or {}).items():
        clauses.append(f"tags.`{key}` = '{value}'")
    runs = _search(c, list(exps), " and ".join(clauses))
    if not sweep and not include_parents:
        # a run that others name as parent is a sweep's summary run, not a training run
        everything = _search(c, list(exps)) if clauses else runs
        parents = {r.data.tags.get(PARENT_TAG) for r in everything}
        runs = [r for r in runs if r.info.run_id not in parents and r.data.tags.get(C.TAG_SWEEP) != "true"]
    records = [to_record(r, exps.get(r.info.experiment_id, "")) for r in runs]
    if states:
        bad = set(states) - set(STATES)
        if bad:
            raise ValueError(f"unknown state(s) {', '.join(sorted(bad))}; choose from {', '.join(STATES)}")
        records = [r for r in records if r.state in states]
    return records


def find_parent_run(c, sweep: str, exp_ids: Optional[List[str]] = None):
    """The sweep's parent run: by run id, else by study-name tag, else by run name."""
    try:
        return c.get_run(sweep)
    except Exception:  # not a run id
        pass
    exp_ids = exp_ids or [e.experiment_id for e in c.search_experiments()]
    for key in STUDY_TAGS:
        runs = _search(c, exp_ids, f"tags.`{key}` = '{sweep}'")
        runs = [r for r in runs if PARENT_TAG not in r.data.tags]
        if runs:
            return runs[0]
    runs = [r for r in _search(c, exp_ids, f"attributes.run_name = '{sweep}'") if PARENT_TAG not in r.data.tags]
    return runs[0] if runs else None


def load_histories(c, records: Iterable[RunRecord], keys: Sequence[str] = HISTORY_KEYS) -> None:
    """Fill ``record.histories`` with (step, value) lists, sorted by step, for the given keys."""
    for rec in records:
        for key in keys:
            if key not in rec.metrics and key != "nonfinite_loss":
                continue
            hist = c.get_metric_history(rec.run_id, key)
            rec.histories[key] = sorted((m.step, m.value) for m in hist)
        # keep per-step timestamps of the throughput log for the tokens-seen estimate
        if "tokens_seen" not in rec.histories and "tokens_per_second" in rec.metrics:
            hist = c.get_metric_history(rec.run_id, "tokens_per_second")
            rec.histories["_tps_time"] = sorted((m.step, m.timestamp / 1000.0) for m in hist)


def tokens_seen_at(rec: RunRecord, steps: Sequence[float]) -> Optional[List[float]]:
    """Tokens seen at each step: the logged ``tokens_seen`` when there, else estimated.

    The estimate for runs logged before ``tokens_seen`` existed: each throughput
    log covers ``tokens_per_second x seconds since the previous log`` tokens over
    its steps; the median tokens per step of those intervals scales the steps.
    """
    import numpy as np

    seen = rec.histories.get("tokens_seen")
    if seen:
        xs = [0.0] + [s for s, _ in seen]
        ys = [0.0] + [v for _, v in seen]
        per_step = ys[-1] / xs[-1] if xs[-1] else 0.0
        return [float(np.interp(s, xs, ys)) if s <= xs[-1] else ys[-1] + per_step * (s - xs[-1]) for s in steps]
    tps = dict(rec.histories.get("tokens_per_second", []))
    times = rec.histories.get("_tps_time", [])
    rates = []
    for (s0, t0), (s1, t1) in zip(times, times[1:]):
        if s1 > s0 and t1 > t0 and s1 in tps:
            rates.append(tps[s1] * (t1 - t0) / (s1 - s0))
    if not rates:
        return None
    per_step = float(np.median(rates))
    return [per_step * s for s in steps]


def differing_params(records: Sequence[RunRecord], ignore: Sequence[str] = VOLATILE_PARAMS) -> List[str]:
    """Param keys whose values are not all the same; of keys that always agree, the shortest."""
    keys = sorted({k for r in records for k in r.params if k not in ignore})
    columns: List[Tuple[Tuple, str]] = []
    for key in keys:
        values = tuple(r.params.get(key) for r in records)
        # a run without the param (a trial that failed before its config was logged) differs in nothing
        if len({v for v in values if v is not None}) <= 1:
            continue
        # lr and optimizer.lr (an interpolation) always agree where both are logged: show the shorter name once
        for i, (seen, name) in enumerate(columns):
            if all(a is None or b is None or a == b for a, b in zip(values, seen)):
                merged = tuple(a if a is not None else b for a, b in zip(values, seen))
                columns[i] = (merged, min(name, key, key=lambda k: (len(k), k)))
                break
        else:
            columns.append((values, key))
    return sorted((name for _, name in columns), key=lambda k: (k.count("."), k))


def label(rec: RunRecord, keys: Sequence[str], max_len: int = 60) -> str:
    """Legend text for a run: its differing params, else its name."""
    if not keys:
        return rec.name or rec.short_id
    text = " ".join(f"{k.split('.')[-1] if k.count('.') else k}={short_value(rec.params.get(k))}" for k in keys)
    return text if len(text) <= max_len else text[:max_len - 3] + "..."


def short_value(value) -> str:
    """A param value for a table or legend: numbers to 3 significant digits, the rest as is."""
    if value is None:
        return "-"
    text = str(value)
    try:
        f = float(text)
    except ValueError:
        return text
    if not math.isfinite(f) or (f.is_integer() and "." not in text and "e" not in text.lower()):
        return text
    return f"{f:.3g}"


# ---------------------------------------------------------------------------
# Optuna


def storage_url(storage: str):
    """An Optuna storage from a URL, a sqlite file, or a journal file."""
    import optuna

    if storage.startswith("journal:///"):  # the sweeper's spelling of a journal file
        storage = storage[len("journal://"):]
    elif "://" in storage:
        return storage
    path = Path(storage).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no Optuna storage file {path}")
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path.resolve()}"
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def load_study(study_name: str, storage: Optional[str] = None, search: Sequence[str] = ("multirun", "outputs"),
               c=None):
    """Open a study: from ``storage``, else from a storage named by its MLflow parent run,
    else from sqlite files under the ``search`` folders that hold a study of that name."""
    import optuna

    candidates = [storage] if storage else []
    if not storage and c is not None:
        parent = find_parent_run(c, study_name)
        if parent is not None:
            candidates += [parent.data.tags[k] for k in STORAGE_TAGS if k in parent.data.tags]
    if not storage:
        for root in search:  # the sweeper's default place first, then any sqlite file below
            for name in ("study.db", "study.journal"):
                direct = Path(root) / "sweeps" / study_name / name
                if direct.is_file():
                    candidates.append(str(direct))
        for root in search:
            candidates += sorted(glob.glob(os.path.join(root, "**", "*.db"), recursive=True), reverse=True)
    tried = []
    for cand in candidates:
        try:
            st = storage_url(cand)
            if study_name in optuna.study.get_all_study_names(storage=st):
                return optuna.load_study(study_name=study_name, storage=st)
        except Exception as e:  # a file that is no Optuna storage, or a missing one
            tried.append(f"{cand} ({type(e).__name__})")
            continue
        tried.append(str(cand))
    where = ", ".join(tried) or "nothing found under " + ", ".join(search)
    raise LookupError(f"no Optuna study '{study_name}' (tried: {where}); pass --storage URL_OR_FILE")


def trial_runs(c, study, parent=None) -> Dict[int, RunRecord]:
    """{trial number: its MLflow run}, from trial user attrs or trial-number tags of the sweep's children."""
    out: Dict[int, RunRecord] = {}
    for t in study.trials:
        run_id = t.user_attrs.get(C.ATTR_MLFLOW_RUN_ID)
        id_file = Path(str(t.user_attrs.get(C.ATTR_TRIAL_DIR, ""))) / C.RUN_ID_FILE
        if not run_id and t.user_attrs.get(C.ATTR_TRIAL_DIR) and id_file.is_file():
            run_id = id_file.read_text().strip()
        if run_id:
            try:
                out[t.number] = to_record(c.get_run(run_id))
            except Exception:
                pass
    if parent is None:
        parent = study_parent_run(c, study)
    if parent is not None:
        for run in _search(c, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"):
            for key in TRIAL_TAGS:
                value = run.data.tags.get(key)
                if value is not None and str(value).isdigit() and int(value) not in out:
                    out[int(value)] = to_record(run)
                    break
    return out


def study_parent_run(c, study):
    """The sweep's parent run: the one the study names, else found by the study's name."""
    run_id = study.user_attrs.get(C.ATTR_MLFLOW_PARENT_RUN_ID)
    if run_id:
        try:
            return c.get_run(run_id)
        except Exception:
            pass
    return find_parent_run(c, study.study_name)


def _search(c, exp_ids: List[str], filter_string: str = ""):
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = c.search_runs(exp_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                             max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
