"""What the board launched and what it reads back: a command's process and log, a run's curve,
progress and result, a sweep's trials.

The board runs nothing in its own process: it starts the CLI (``python -m ftrun ...``,
``python -m ftrun.export ...``) as a child process, without a shell, and follows its
output. A run is found by the line ``ftrun.train`` logs before it loads anything
(``Run '<name>' (stage ..) in <dir>``), a sweep by the line the sweeper logs when it
opens its study (``Study <name> (..) in <storage>: ..``). From there everything is read
from the files and stores the run writes anyway: the MLflow run's metric history (the
``mlflow_run_id`` file names it; without tracking, the newest ``trainer_state.json``),
``result.json``, and the Optuna study. Nothing here imports gradio or torch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ftrun import contract as C

RUN_LINE = re.compile(r"Run '(?P<name>.+?)' \(stage \w+\) in (?P<dir>.+)$")
STUDY_LINE = re.compile(r"Study (?P<name>\S+) \(.*?\) in (?P<storage>\S+): ")
MLFLOW_LINE = re.compile(r"MLflow: run \S+ \((?P<id>[0-9a-f]{32})\) in experiment '.*' at (?P<uri>\S+)$")
ERROR_LINE = re.compile(r"\]\[ERROR\] - |^error: |^Traceback ")
CURVES = ("train_loss", "eval_loss")
POLL_S = 1.0
"""How often the page refreshes what a running command shows."""
STOP_GRACE_S = 30.0
"""How long Stop waits after SIGTERM (a run ends its MLflow run, a sweep records its trials) before SIGKILL."""


class Job:
    """A command the board started: its process, its output so far, and how it ended."""

    def __init__(self, argv: Sequence[str], cwd: Optional[Path] = None):
        self.argv = list(argv)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # no shell: the arguments reach the CLI exactly as the page shows them
        self.proc = subprocess.Popen(self.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", env=env, start_new_session=True)
        self.lines: List[str] = []
        self.stopped = False
        """Stop was clicked."""
        self.ended = threading.Event()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
        self.proc.wait()
        if self.stopped:
            self._end_left_runs("KILLED", "stopped from the board; its process did not end the run itself "
                                          "(see the run's log)")
        elif self.proc.returncode < 0:  # killed by a signal nobody here sent: the kernel's OOM killer, kill -9
            self._end_left_runs("FAILED", f"its process was killed by signal {-self.proc.returncode} "
                                          "(SIGKILL: often the kernel's out-of-memory killer)")
        self.ended.set()

    def _end_left_runs(self, status: str, reason: str) -> None:
        """A run's MLflow run that its process left RUNNING (stopped and killed after the grace, failed while
        ending it, or killed from outside) is recorded ``status``, with ``reason``; a sweep's runs are its own
        to record (its study may go on on other hosts)."""
        if self.study() is not None:
            return
        for line in self.lines:
            m = MLFLOW_LINE.search(line)
            if not m:
                continue
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(m["uri"])
                if client.get_run(m["id"]).info.status == "RUNNING":
                    client.set_tag(m["id"], C.TAG_FAIL_REASON, reason)
                    client.set_terminated(m["id"], status)
                    self.lines.append(f"(MLflow run {m['id']} was left RUNNING: recorded {status})")
            except Exception as e:  # noqa: BLE001 - the store is gone or unreachable: say so, keep the board up
                self.lines.append(f"(could not record MLflow run {m['id']} as {status}: {e})")

    def wait(self, timeout: float) -> bool:
        """Block until the command ends or ``timeout`` passes; True when it has ended."""
        return self.ended.wait(timeout)

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode if self.ended.is_set() else None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the command's process group (a sweep stops its trials and records them); SIGKILL to what
        is left of the group after ``grace_s`` (a process that ignored the signal, or one still holding the
        output pipe), so that Stop always ends the command."""
        if not self.ended.is_set():
            self.stopped = True
            self._signal(signal.SIGTERM)
            timer = threading.Timer(grace_s, self._kill, args=(grace_s,))
            timer.daemon = True
            timer.start()

    def _kill(self, grace_s: float) -> None:
        if not self.ended.wait(0):
            self.lines.append(f"(still running {grace_s:g} s after Stop's SIGTERM: killed with SIGKILL)")
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def log(self, tail: int = 300) -> str:
        return "\n".join(self.lines[-tail:])

    def run_dir(self) -> Optional[Path]:
        for line in self.lines:
            m = RUN_LINE.search(line)
            if m:
                return Path(m["dir"].strip())
        return None

    def study(self) -> Optional[Tuple[str, str]]:
        for line in self.lines:
            m = STUDY_LINE.search(line)
            if m:
                return m["name"], m["storage"]
        return None

    def failure(self) -> str:
        """Why the command failed: its error message (from the first error line on), else its last lines."""
        lines = self.lines
        first = next((i for i, ln in enumerate(lines) if ERROR_LINE.search(ln)), None)
        shown = lines[first:first + 20] if first is not None else lines[-8:]
        text = "\n".join(shown).strip() or f"exit status {self.returncode}"
        if self.stopped:  # what the command said last (a sweep: how to resume it), not its traceback
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            return f"stopped (SIGTERM to its process group): {last}"
        return text


# ---------------------------------------------------------------------------
# a run


@dataclass
class RunView:
    """What the page shows of a run: curve points, progress, result."""

    points: List[Tuple[int, str, float]] = field(default_factory=list)
    """(step, series, value) of train_loss and eval_loss."""
    step: int = 0
    epoch: float = 0.0
    total: Optional[int] = None
    """The run's own step count, from its progress line."""
    result: Optional[dict] = None


def read_run(run_dir: Optional[Path], lines: Sequence[str], tracking_uri: Optional[str]) -> RunView:
    view = RunView()
    if run_dir is None:
        return view
    view.points = curve(run_dir, tracking_uri)
    view.step = max((p[0] for p in view.points), default=0)
    progress = last_progress(lines)
    if progress:
        view.epoch, view.total = float(progress["epoch"]), int(progress["total"])
        view.step = max(view.step, int(progress["step"]))
    view.result = read_result(run_dir)
    if view.result and view.result.get("global_step"):
        view.step = int(view.result["global_step"])
    return view


def curve(run_dir: Path, tracking_uri: Optional[str]) -> List[Tuple[int, str, float]]:
    """Loss points from the run's MLflow run, else from its newest trainer state."""
    id_file = Path(run_dir) / C.RUN_ID_FILE
    if id_file.is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        run_id = id_file.read_text().strip()
        return [(int(m.step), name, float(m.value)) for name in CURVES
                for m in client.get_metric_history(run_id, name)]
    states = sorted(Path(run_dir).glob(f"checkpoint-*/{C.TRAINER_STATE}"), key=lambda p: p.stat().st_mtime)
    final = Path(run_dir) / C.TRAINER_STATE
    state = final if final.is_file() else (states[-1] if states else None)
    if state is None:
        return []
    points = []
    for entry in json.loads(state.read_text()).get("log_history", []):
        for key, name in (("loss", "train_loss"), ("eval_loss", "eval_loss")):
            if key in entry and "step" in entry:
                points.append((int(entry["step"]), name, float(entry[key])))
    return points


def last_progress(lines: Sequence[str]) -> Optional[re.Match]:
    """The run's last progress line (:data:`ftrun.contract.PROGRESS_LINE`: step, total, epoch)."""
    pattern = re.compile(C.PROGRESS_LINE)
    for line in reversed(lines):
        m = pattern.search(line)
        if m:
            return m
    return None


def last_epoch(lines: Sequence[str]) -> float:
    """The epoch of the run's last progress line."""
    m = last_progress(lines)
    return float(m["epoch"]) if m else 0.0


def read_result(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / C.RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet (it is written last)
        return None


def result_text(result: dict) -> str:
    if result.get("status") == "diverged":
        return f"diverged: {result.get('reason')}"
    name = result.get("objective_name")
    parts = [f"{name} = {result.get('objective'):.4f}"] if name and result.get("objective") is not None else []
    parts += [f"{k} = {v:.4f}" for k, v in result.items()
              if k.startswith("eval_") and k != name and isinstance(v, float) and not k.endswith(("_runtime", "_second"))]
    parts.append(f"{result.get('global_step')} steps in {result.get('train_time_s', 0):.1f} s")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# a sweep

TRIAL_COLUMNS = ["trial", "state", "value", "pruned or paused at", "params", "seconds", "MLflow run"]


def read_trials(study_name: str, storage_url: str, mlflow_ui: Optional[str] = None,
                tracking_uri: Optional[str] = None) -> Tuple[List[list], str, Optional[Path]]:
    """(rows of the trial table, a line on the best trial so far, the sweep's summary.md)."""
    import optuna

    from sweeper.compute import compute_account, compute_text, trial_kind, trial_seconds
    from sweeper.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    rows = []
    for t in study.trials:
        values = t.values if t.values is not None else []
        pruned_at = max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else None
        paused = trial_kind(t) == "paused"  # hydra.sweeper.pruner=promotion: waiting at a rung (examples seen)
        if paused:
            pruned_at = t.user_attrs.get(C.ATTR_PAUSED_AT)
            values = [t.intermediate_values[pruned_at]] if pruned_at in t.intermediate_values else []
        run_id = t.user_attrs.get(C.ATTR_MLFLOW_RUN_ID) or _read(Path(t.user_attrs.get(C.ATTR_TRIAL_DIR, "")),
                                                                  C.RUN_ID_FILE)
        link = run_link(mlflow_ui, run_id, tracking_uri) if run_id else ""
        promoted = t.user_attrs.get(C.ATTR_PROMOTIONS)
        rows.append([t.number, "PAUSED" if paused else t.state.name + (f" (promoted {promoted}x)" if promoted else ""),
                     ", ".join(f"{v:.4f}" for v in values), "" if pruned_at is None else pruned_at,
                     " ".join(f"{k}={_short(v)}" for k, v in t.params.items()),
                     round(trial_seconds(t), 1) if t.state.is_finished() or paused else "", link])
    best = ""
    if len(study.directions) == 1:
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if done:
            b = study.best_trial
            best = f"best so far: trial {b.number}, value {b.value:.4f} ({', '.join(f'{k}={_short(v)}' for k, v in b.params.items())})"
    parent = study.user_attrs.get(C.ATTR_MLFLOW_PARENT_RUN_ID)
    if parent:
        best += f" · sweep's MLflow run: {run_link(mlflow_ui, parent, tracking_uri)}"
    best += (" · " if best else "") + compute_text(compute_account(study.trials), {})  # as summary.md counts it
    sweep_dir = study.user_attrs.get("sweep_dir")
    summary = Path(sweep_dir) / "summary.md" if sweep_dir else None
    return rows, best, summary if summary and summary.is_file() else None


def _read(d: Path, name: str) -> Optional[str]:
    try:
        return (d / name).read_text().strip() if str(d) else None
    except OSError:
        return None


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_link(mlflow_ui: Optional[str], run_id: str, tracking_uri: Optional[str] = None,
             experiment_id: Optional[str] = None) -> str:
    """A markdown link to the run in the MLflow UI (``mlflow ui`` serves it)."""
    if not mlflow_ui:
        return run_id
    if experiment_id is None:
        try:
            from mlflow.tracking import MlflowClient

            experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a link without the experiment still finds the run
            experiment_id = "0"
    return f"[{run_id[:8]}]({mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"


# ---------------------------------------------------------------------------
# finished runs and exports (what Chat and Export offer)


def finished_models(output_root: Path) -> Dict[str, str]:
    """``{label: chat source}`` of every finished run under ``output_root`` and every export in them:
    ``run=<dir>`` for a run, ``model=<dir>`` for an export."""
    from ftrun.export import INFO_FILE

    out = {}
    root = Path(output_root)
    results = sorted(root.glob(f"*/*/{C.RESULT_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for res in results:
        run_dir = res.parent
        r = read_result(run_dir) or {}
        if r.get("status", "finished") == "finished" and (run_dir / C.MODEL_DIR).is_dir():
            out[f"run {run_dir}"] = f"run={run_dir}"
        for info in run_dir.glob(f"*/{INFO_FILE}"):
            out[f"export {info.parent}"] = f"model={info.parent}"
    return out
