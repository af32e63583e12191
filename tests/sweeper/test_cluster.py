"""One study shared by two sweeper "hosts" on a real PostgreSQL server, runs on a real MLflow tracking server.

The services start from the repository's own scripts (``scripts/postgres.sh``, ``scripts/mlflow_server.sh``) on
127.0.0.1. Each host is ``python -m ftrun -m ...`` with the same command, in its own UTS namespace (its own
hostname, so the survivor cannot tell the dead host's trials by process id and must go by Optuna's heartbeat)
and its own sweep directory (deleted when its host is killed: its disk is gone with it). Trials train the tiny
model for a few steps. Host B is SIGKILLed (sweeper, warm worker and trial) while a trial of it is training;
host A fails that trial once its heartbeat is stale, retries it, and finishes the study.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from conftest import ROOT
from sweeper import stale_trials
from sweeper.study import open_storage

TRIAL = ["data.num_train=48", "data.num_eval=16", "max_steps=8", "batch_size=8", "train.logging_steps=2",
         "train.eval_steps=2", "train.save_steps=0"]
N_TRIALS = 4


def sweep_args(sweep_dir: Path, storage=None, study="cluster"):
    """The sweep command's arguments; only the storage differs between one machine and a cluster."""
    return ["lr=tag(log,interval(1e-4,1e-1))", *TRIAL, f"hydra.sweeper.n_trials={N_TRIALS}",
            "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner={name:median,n_startup_trials:1,n_warmup_steps:0}",
            "hydra.sweeper.enqueue=[{lr:3e-3},{lr:1e-3},{lr:1e-5}]", f"hydra.sweeper.study_name={study}",
            "hydra.sweeper.heartbeat_s=1", "hydra.sweeper.stale_after_s=8", f"hydra.sweep.dir={sweep_dir}",
            *([f"hydra.sweeper.storage='{storage}'"] if storage else [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
               "DEADLINE"}


def _wait_for(check, what: str, limit_s: float = 300, proc=None):
    """Poll ``check`` until it returns something truthy (the event), failing if ``proc`` dies first."""
    deadline = time.time() + limit_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (exit {proc.returncode})")
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {limit_s:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server from scripts/postgres.sh on a free loopback port: (optuna URL, mlflow URL)."""
    base = Path(tempfile.mkdtemp(prefix="ftrun-pg-"))
    base.chmod(0o755)  # under root the server runs as the unprivileged postgres user, who must reach it
    data, port = base / "data", _free_port()
    out = subprocess.run([str(ROOT / "scripts/postgres.sh"), "start", str(data), str(port)], capture_output=True,
                         text=True, timeout=180)
    if out.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start (scripts/postgres.sh: {out.stderr.strip()[-800:]}); "
                    "install it with apt-get install -y postgresql (.ci/run does)")
    try:
        optuna_url, mlflow_url = out.stdout.split()
        yield optuna_url, mlflow_url
    finally:
        subprocess.run([str(ROOT / "scripts/postgres.sh"), "stop", str(data)], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM cluster (munged, slurmctld, slurmd) on 127.0.0.1 from scripts/slurm.sh: its SLURM_CONF."""
    base = Path(tempfile.mkdtemp(prefix="ftrun-slurm-"))
    out = subprocess.run([str(ROOT / "scripts/slurm.sh"), "start", str(base), str(_free_port())],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        subprocess.run([str(ROOT / "scripts/slurm.sh"), "stop", str(base)], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"SLURM could not start (scripts/slurm.sh: {out.stderr.strip()[-800:]}); install it with "
                    "apt-get install -y slurmctld slurmd slurm-client munge (.ci/run does) and run as root")
    yield out.stdout.strip()
    subprocess.run([str(ROOT / "scripts/slurm.sh"), "stop", str(base)], capture_output=True, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on the PostgreSQL backend store with an artifact directory, from scripts/mlflow_server.sh."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([str(ROOT / "scripts/mlflow_server.sh"), postgres[1], str(tmp / "artifacts"), str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_WORKERS": "1"})
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        _wait_for(healthy, "mlflow server /health", 180, proc)
    except AssertionError as e:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.skip(f"the MLflow server could not start ({e}): {(tmp / 'server.log').read_text()[-800:]}")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # a throwaway server: no need to wait for its workers' graceful exit
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()


def start_host(name: str, args, env, log: Path) -> subprocess.Popen:
    """``python -m ftrun -m <args>`` as host ``name``: its own hostname (a UTS namespace) and process group."""
    cmd = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh",
           sys.executable, "-m", "ftrun", "-m", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_host(proc: subprocess.Popen) -> None:
    """SIGKILL the host's sweeper, its warm workers and trials at once, as a machine that dies."""
    import psutil

    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def test_a_process_polling_a_study_on_the_server_holds_one_pool_of_connections(postgres):
    """The board's job page and a warm worker's trials open the study again and again: one storage per process and
    URL, so the server's connections stay few (each storage opened anew held its pool's connections until the
    garbage collector ran, and a polling test ran the CI's PostgreSQL out of connections)."""
    import gc

    import psutil

    url = postgres[0]
    port = int(re.search(r":(\d+)/", url).group(1))
    assert open_storage(url) is open_storage(url)
    optuna.create_study(study_name="polled", storage=open_storage(url))
    gc.disable()  # what a busy process's collector may not reach for a while
    try:
        for _ in range(20):
            optuna.load_study(study_name="polled", storage=open_storage(url)).get_trials()
        held = [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    finally:
        gc.enable()
    assert len(held) <= 2, held


@pytest.fixture(scope="module")
def two_hosts(postgres, mlflow_server, tmp_path_factory):
    if subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --uts (root) is needed to give the second sweeper host its own hostname")
    tmp = tmp_path_factory.mktemp("two_hosts")
    storage = postgres[0]
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    a = start_host("host-a", sweep_args(tmp / "host-a", storage), env, tmp / "host-a.log")
    load = lambda: optuna.load_study(study_name="cluster", storage=open_storage(storage))  # noqa: E731

    def running(host):
        try:
            study = load()
        except KeyError:
            return None
        return [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("sweeper_host") == host]
    try:
        # host B joins a study host A has already set up (its first trial running), with the same command
        _wait_for(lambda: running("host-a"), "host A's first trial", 300, a)
        b = start_host("host-b", sweep_args(tmp / "host-b", storage), env, tmp / "host-b.log")
        # kill host B while one of its trials is training (it has reported an evaluation)
        victim = _wait_for(lambda: [t for t in running("host-b") or [] if t.intermediate_values],
                           "a trial of host B reporting", 300, b)[0]
        kill_host(b)
        shutil.rmtree(tmp / "host-b")  # the dead host's disk is gone too
        a.wait(timeout=600)
    finally:
        for p in (a, locals().get("b")):
            if p is not None and p.poll() is None:
                kill_host(p)
    logs = {h: (tmp / f"{h}.log").read_text(errors="replace") for h in ("host-a", "host-b")}
    assert a.returncode == 0, logs["host-a"][-5000:]
    return {"study": load(), "victim": victim.number, "uri": mlflow_server, "logs": logs, "tmp": tmp}


def _counted(t):
    return t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs


@pytest.mark.slow  # the fixture: about 2.5 minutes on 2 shared cores (PostgreSQL, MLflow server, 5 tiny trials)
def test_two_hosts_finish_exactly_n_trials_with_pruning(two_hosts):
    trials = two_hosts["study"].trials
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert sum(_counted(t) for t in trials) == N_TRIALS
    assert any(t.state.name == "PRUNED" for t in trials)  # lr=1e-5 against the median of the others
    ran = [t for t in trials if _counted(t) or t.number == two_hosts["victim"]]
    assert {t.user_attrs["sweeper_host"] for t in ran} == {"host-a", "host-b"}
    for t in trials:
        if t.state.name == "FAIL":
            assert t.user_attrs.get("fail_reason"), t
    # no configuration trained twice, no trial run by both hosts
    lrs = [t.params["lr"] for t in trials if _counted(t)]
    assert len(set(lrs)) == len(lrs)


@pytest.mark.slow
def test_killed_hosts_trial_failed_by_heartbeat_and_retried(two_hosts):
    trials = two_hosts["study"].trials
    victim = trials[two_hosts["victim"]]
    assert victim.state.name == "FAIL"
    assert "no heartbeat for more than 8 s" in victim.user_attrs["fail_reason"]
    assert "host-b" in victim.user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.system_attrs["failed_trial"] == victim.number  # Optuna's RetryHeartbeatStaleTrialCallback
    assert retry.params == victim.params
    assert _counted(retry) and retry.user_attrs["sweeper_host"] == "host-a"


@pytest.mark.slow
def test_one_mlflow_parent_with_every_hosts_trials(two_hosts):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=two_hosts["uri"])
    exp = client.get_experiment_by_name("ftrun")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("ftrun.sweep") == "true"]
    assert parent.data.tags["study_name"] == "cluster"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    by_trial = {}
    for r in children:
        by_trial.setdefault(int(r.data.tags["optuna.trial"]), []).append(r)
    trials = two_hosts["study"].trials
    ran = [t for t in trials if _counted(t)] + [trials[two_hosts["victim"]]]
    assert sorted(by_trial) == sorted(t.number for t in ran)
    for t in ran:
        (run,) = by_trial[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
    # the dead host's run was closed by the survivor
    assert by_trial[two_hosts["victim"]][0].info.status == "FAILED"
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_same_command_on_one_machine_with_sqlite(tmp_path):
    from sweeper_helpers import ftrun_multirun

    args = [a.replace(f"n_trials={N_TRIALS}", "n_trials=1") for a in sweep_args(tmp_path / "sweeps", study="local")]
    out = ftrun_multirun(args, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert out.returncode == 0, out.stderr[-4000:]
    study = optuna.load_study(study_name="local", storage=f"sqlite:///{tmp_path / 'sweeps/local/study.db'}")
    # the first enqueued configuration runs; the other two are not needed
    assert [t.state.name for t in study.trials] == ["COMPLETE", "WAITING", "WAITING"]


@pytest.mark.slow  # about 40 s: two sweeper hosts start; the trials are a stand-in that sleeps 3 s
def test_sweeper_hosts_as_a_slurm_job_array(postgres, slurm, mlflow_server, tmp_path):
    from sweeper_helpers import FAKE

    env = {**os.environ, "SLURM_CONF": slurm, "FTRUN_STORAGE": postgres[0], "FTRUN_SWEEP_DIR": str(tmp_path),
           "MLFLOW_TRACKING_URI": mlflow_server, "FAKE_SLEEP": "3", "FAKE_MLFLOW": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["lr=tag(log,interval(1e-5,1e-1))", "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=slurm",
            f"hydra.sweeper.command=[{FAKE[0]},{FAKE[1]}]", "hydra.sweeper.pruner=none", "tracking.experiment=slurm"]
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1",
                          f"--output={tmp_path}/%A_%a.log", str(ROOT / "scripts/slurm_sweep.sbatch"), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]

    def ended():  # every task in a final state; squeue can drop a task while slurmctld still shows it COMPLETING
        states = [subprocess.run(["scontrol", "show", "job", f"{job}_{task}"], env=env, capture_output=True,
                                 text=True).stdout for task in (0, 1)]
        final = [re.search(r"JobState=(\w+)", s) for s in states]
        if all(m and m.group(1) in SLURM_FINAL for m in final):
            return states
        return None
    states = _wait_for(ended, f"SLURM job {job}", 300)
    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob(f"{job}_*.log")))
    for state in states:
        assert "ExitCode=0:0" in state and "JobState=COMPLETED" in state, state + logs[-4000:]
    study = optuna.load_study(study_name="slurm", storage=open_storage(postgres[0]))
    counted = [t for t in study.trials if _counted(t)]
    assert len(counted) == 6 and all(t.state.name == "COMPLETE" for t in counted)
    assert len({t.user_attrs["sweeper_pid"] for t in counted}) == 2, logs[-4000:]  # both array tasks ran trials
    # every trial's result came back through the same contract as a local trial (result.json -> the study)
    assert all(Path(t.user_attrs["trial_dir"]).is_relative_to(tmp_path) for t in counted)


# -- the rules on their own, in-process on a SQLite study (seconds) ---------------------------------------------


def _sweep(tmp_path, **conf):
    from conftest import compose_cfg
    from sweeper.settings import read_settings
    from sweeper.space import parse_search_space
    from sweeper.sweep import Sweep
    from sweeper_helpers import FAKE

    space = parse_search_space({}, ["lr=tag(log,interval(1e-5,1e-1))"], None)
    conf = {"study_name": "s", "storage": f"sqlite:///{tmp_path / 'shared.db'}", "command": FAKE, **conf}
    sweep = Sweep(read_settings(conf, space, compose_cfg(["tracking.enabled=false"]), tmp_path))
    sweep.open()
    return sweep


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks as the other hosts do
def test_a_trial_past_n_trials_that_other_hosts_started_is_not_run(tmp_path):
    sweep = _sweep(tmp_path, n_trials=2)
    others = [sweep.study.ask() for _ in range(2)]  # another host's two trials, running
    sweep.study.enqueue_trial({"lr": 1e-3})
    # this host saw room for one more a moment ago, and asks: it gets the queued configuration, trial 2
    assert sweep.quota.ask() is None
    t = sweep.study.trials
    assert t[2].state.name == "FAIL" and t[2].user_attrs["surplus"] and "n_trials=2" in t[2].user_attrs["fail_reason"]
    assert t[3].state.name == "WAITING" and t[3].system_attrs["fixed_params"] == {"lr": 1e-3}  # queued again
    assert sweep.quota.counts()["SURPLUS"] == 1
    # one of the other host's trials fails: there is room again, and the queued configuration runs
    sweep.study.tell(others[0], state=optuna.trial.TrialState.FAIL)
    mine = sweep.quota.ask()
    assert mine is not None and mine.number == 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks as the other hosts do
def test_another_hosts_silent_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    sweep = _sweep(tmp_path, n_trials=2, heartbeat_s=1, stale_after_s=1)
    dead = sweep.study.ask()  # a trial of a host that then died: one heartbeat, then silence
    for k, v in {"sweeper_host": "elsewhere", "sweeper_pid": 1, "trial_dir": str(tmp_path / "gone")}.items():
        dead.set_user_attr(k, v)
    stale_trials.beat(sweep.study, dead)
    alive = sweep.study.ask()  # a live host's trial, beating
    for k, v in {"sweeper_host": "elsewhere-too", "sweeper_pid": 1}.items():
        alive.set_user_attr(k, v)

    def dead_is_stale():
        stale_trials.beat(sweep.study, alive)
        return [t.number for t, _ in stale_trials.left_behind(sweep.study, sweep.s.host, 1)] == [dead.number]
    _wait_for(dead_is_stale, "the dead trial's heartbeat going stale", 60)
    stale_trials.beat(sweep.study, alive)
    sweep._recover_left_behind()
    t = sweep.study.trials
    assert t[0].state.name == "FAIL" and "no heartbeat" in t[0].user_attrs["fail_reason"]
    assert "elsewhere" in t[0].user_attrs["fail_reason"] and "retried from the start" in t[0].user_attrs["fail_reason"]
    assert t[1].state.name == "RUNNING"  # its heartbeat is fresh
    (retry,) = [x for x in t if x.state.name == "WAITING"]
    assert retry.params == t[0].params and retry.user_attrs["retry_of"] == 0
    assert retry.system_attrs["failed_trial"] == 0 and "fail_reason" not in retry.user_attrs
    # a second sweeper finding the same stale trial does not retry it again
    stale_trials.recover(sweep.study, stale_trials.stored_trial(sweep.study, dead), "again", sweep.s)
    assert len(sweep.study.trials) == 3


def test_a_missing_database_driver_is_named_with_the_fix(monkeypatch):
    from sweeper.study import SweepConfigError, require_driver, safe_url

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(SweepConfigError) as e:
        require_driver("postgresql://ftrun:secret@db.example:5432/optuna")
    assert "psycopg" in str(e.value) and "pip install" in str(e.value) and "secret" not in str(e.value)
    assert safe_url("postgresql://ftrun:secret@db:5432/optuna") == "postgresql://ftrun:***@db:5432/optuna"
    require_driver("sqlite:///x.db")  # nothing to install
