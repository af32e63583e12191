"""Packed trials in a sweep (hydra.sweeper.pack, sweeper.pack): each member is its own Optuna trial and MLflow child
run with the result it gets unpacked; pruning and divergence act on one member; a trial that cannot join a pack
waits for another pack, and one that cannot be packed runs unpacked, with the reason logged; a worker killed
mid-pack fails every member; a resumed sweep packs again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, compose_cfg

TRIAL = ["data.num_train=32", "data.num_eval=16", "batch_size=8", "train.logging_steps=2", "train.save_steps=0",
         "max_steps=6", "train.eval_steps=3"]


def sweep(tmp_path: Path, arguments, name: str, uri=None, **conf):
    """run_sweep in-process with warm workers; (study, the sweep's log records)."""
    from sweeper.sweep import run_sweep

    swept = {a.split("=", 1)[0] for a in arguments}
    fixed = [a for a in TRIAL if a.split("=", 1)[0] not in swept] + ([] if uri else ["tracking.enabled=false"])
    conf = {"study_name": name, "sampler": "grid", "pruner": "none", **conf}
    with pytest.MonkeyPatch.context() as mp:
        if uri:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
        result = run_sweep(conf, [*arguments, *fixed], compose_cfg(fixed), tmp_path / "sweeps")
    return optuna.load_study(study_name=result.study_name, storage=result.storage)


@pytest.fixture(scope="module")
def packed_and_alone(tmp_path_factory):
    """A 4-point grid swept with pack=4 (MLflow on), and each of its configurations trained alone."""
    from ftrun.train import run

    tmp = tmp_path_factory.mktemp("packs")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    packed = sweep(tmp / "packed", ["lr=1e-3,3e-3", "rank=4,64"], "packed", uri=uri, pack=4)
    alone = {}
    for lr in (1e-3, 3e-3):
        for rank in (4, 64):
            cfg = compose_cfg([*TRIAL, "tracking.enabled=false", f"lr={lr}", f"rank={rank}"])
            alone[(lr, rank)] = run(cfg, tmp / "alone" / f"lr{lr}-r{rank}")
    return packed, alone, uri


def test_packed_trials_equal_their_unpacked_runs(packed_and_alone):
    packed, alone, _ = packed_and_alone
    assert len(packed.trials) == 4 and all(t.state.name == "COMPLETE" for t in packed.trials)
    for t in packed.trials:
        assert t.value == pytest.approx(alone[(t.params["lr"], t.params["rank"])], rel=1e-5), t.params
        assert t.user_attrs["packed_with"] == [0, 1, 2, 3]
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
        assert result["packed"] is True and result["global_step"] == 6
    assert len({t.user_attrs["worker_pid"] for t in packed.trials}) == 1  # one worker, one base
    # the device was shared: each member is charged a quarter of the pack's wall time
    durations = [t.user_attrs["duration_s"] for t in packed.trials]
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in packed.trials]
    assert max(durations) < 0.5 * min(walls), (durations, walls)
    summary = (Path(packed.trials[0].user_attrs["trial_dir"]).parent / "summary.md").read_text()
    assert "packed with 4 (trials 0, 1, 2, 3)" in summary


def test_each_packed_trial_is_its_own_mlflow_child_run(packed_and_alone):
    from mlflow.tracking import MlflowClient

    packed, _, uri = packed_and_alone
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("ftrun.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(r.info.status == "FINISHED" and r.data.tags["packed"] == "true"
                                      for r in children)
    by_run = {Path(t.user_attrs["trial_dir"]).joinpath("mlflow_run_id").read_text(): t for t in packed.trials}
    assert set(by_run) == {r.info.run_id for r in children}
    for r in children:
        t = by_run[r.info.run_id]
        assert float(r.data.params["optimizer.lr"]) == t.params["lr"] and int(r.data.params["method.rank"]) == \
            t.params["rank"]
        assert r.data.metrics["eval_loss"] == pytest.approx(t.value, rel=1e-9)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [2, 4, 6]


def test_a_trial_joins_a_running_pack_when_a_member_leaves(tmp_path, caplog):
    """pack=2 over (lr, max_steps) in grid order: trials 0 (2 steps) and 1 (60) start packed; when 0 leaves, trial 2
    (2 steps) joins 1 in its worker, then trial 3 (60) when 2 leaves. The joiners end as they do unpacked, and the
    pack's wall time is charged once, split among the members training at each moment."""
    from ftrun.train import run

    caplog.set_level(logging.INFO, logger="ftrun.sweeper")
    study = sweep(tmp_path, ["lr=1e-3,3e-3", "max_steps=2,60", "train.eval_steps=30"], "join", pack=2)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [(t.params["lr"], t.params["max_steps"]) for t in trials] == [(1e-3, 2), (1e-3, 60), (3e-3, 2),
                                                                          (3e-3, 60)]
    assert [t.user_attrs["packed_with"] for t in trials] == [[0, 1], [0, 1], [1, 2], [1, 3]]
    assert "Trials 2 join the pack of trials 1" in caplog.text and "Trials 3 join the pack of trials 1" in caplog.text
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 1  # one worker, one base, one pack throughout
    pack_log = (Path(trials[0].user_attrs["trial_dir"]) / "trial.log").read_text()
    assert "Training 2 trials in one pack" in pack_log and pack_log.count("joins the pack at its step") == 2
    for t in trials[2:]:
        cfg = compose_cfg([*TRIAL, "tracking.enabled=false", "train.eval_steps=30", f"lr={t.params['lr']}",
                           f"max_steps={t.params['max_steps']}"])
        assert t.value == pytest.approx(run(cfg, tmp_path / "alone" / str(t.number)), rel=1e-5), t.params
    # every second of the pack charged once: the members' trial-seconds add up to the pack's wall time
    durations = sum(t.user_attrs["duration_s"] for t in trials)
    wall = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    assert 0.8 * wall < durations <= wall + 0.5, (durations, wall)


def test_trials_sent_to_join_a_pack_that_has_ended_train_as_a_pack_of_their_own(tmp_path):
    """The race a join can lose: the pack's last member ended in the worker before the join arrived. The worker
    trains the joiners as a new pack, and its answer says whom each trained with; one that cannot join is answered
    at once with a configuration error and its log says why."""
    from ftrun.exit_status import EXIT_CONFIG_ERROR
    from sweeper.pack import Pack, PackMember
    from sweeper.slots import make_slots
    from sweeper.worker import Worker

    (slot,) = make_slots(1, gpus_per_trial=0)
    worker = Worker(slot, tmp_path / "worker.log", env={"TOKENIZERS_PARALLELISM": "false"})

    def member(number, *extra):
        d = tmp_path / f"trial_{number}"
        d.mkdir()
        return {"number": number, "args": [*TRIAL, "tracking.enabled=false", *extra, f"hydra.run.dir={d}"],
                "env": {}, "log": str(d / "trial.log")}

    try:
        pack = Pack(worker, [member(0, "max_steps=1")])
        first = PackMember(pack, 0)
        assert first.wait(timeout=600) == 0
        pack.join([member(1), member(2, "batch_size=4")])
        joined, refused = PackMember(pack, 1), PackMember(pack, 2)
        assert joined.wait(timeout=600) == 0 and refused.wait(timeout=600) == EXIT_CONFIG_ERROR
    finally:
        worker.close()
    assert first.info["packed_with"] == [0] and joined.info["packed_with"] == [1], (first.info, joined.info)
    assert json.loads((tmp_path / "trial_1" / "result.json").read_text())["global_step"] == 6
    assert "micro-batch size differs" in (tmp_path / "trial_2" / "trial.log").read_text()
    assert pack.open == set() and pack.seconds(1) > 0


def test_pruning_and_divergence_stop_one_member_and_an_incompatible_trial_runs_unpacked(tmp_path, caplog):
    """lr 1e6 diverges (its gradients NaN at once, or all 0 from step 3 on: ftrun.divergence) before the first
    evaluation (step 6 of 8), where the threshold pruner stops lr 1e-3; the two micro-batch sizes cannot share a
    pack."""
    caplog.set_level(logging.INFO, logger="ftrun.sweeper")
    study = sweep(tmp_path, ["lr=1e-3,1e6", "batch_size=4,8", "optimizer.max_grad_norm=0", "max_steps=8",
                             "train.eval_steps=6"], "prune", pack=4,
                  pruner={"name": "threshold", "upper": 0.1})
    assert sorted(t.state.name for t in study.trials) == ["PRUNED"] * 4
    for t in study.trials:
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "result.json").read_text())
        if t.params["lr"] == 1e6:
            assert t.user_attrs["diverged"] is True and result["status"] == "diverged"
        else:
            assert t.user_attrs["pruned"] is True and result["pruned"] is True and result["global_step"] == 6
            assert list(t.intermediate_values) == [6 * t.params["batch_size"]]  # examples seen at the report
    packs = {tuple(t.user_attrs.get("packed_with", [t.number])) for t in study.trials}
    assert all(len({study.trials[n].params["batch_size"] for n in p}) == 1 for p in packs)
    assert "micro-batch size differs" in caplog.text and "cannot join the pack of trial" in caplog.text


def test_promotion_pauses_packed_trials_and_a_promoted_one_resumes_alone_from_its_checkpoint(tmp_path):
    """pruner=promotion with pack=2: lr 1e-3 and 3e-2 train in one pack and pause at the first rung (24 examples,
    step 3 of 6: the first alone there, the second not in the better half); the slot frees, 1e-3 is promoted and
    resumes alone, in its Optuna trial and MLflow run, from the checkpoint the pack wrote, and ends where it ends
    trained straight through; 3e-2 is never promoted: PRUNED, its checkpoint deleted."""
    from mlflow.tracking import MlflowClient

    from ftrun.train import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = sweep(tmp_path, ["lr=tag(log,interval(1e-8,1e-1))"], "promote", uri=uri, pack=2, sampler="tpe",
                  n_trials=2, enqueue=[{"lr": 1e-3}, {"lr": 3e-2}],
                  pruner={"name": "promotion", "reduction_factor": 2})
    good, bad = study.trials
    assert good.user_attrs["packed_with"] == bad.user_attrs["packed_with"] == [0, 1]
    assert good.state.name == "COMPLETE" and good.user_attrs["promotions"] == 1
    assert sorted(good.intermediate_values) == [24, 48]  # the packed rung's report, then the resumed run's
    assert bad.state.name == "PRUNED" and "not promoted" in bad.user_attrs["fail_reason"]
    assert not list(Path(bad.user_attrs["trial_dir"]).glob("checkpoint-*"))
    log = (Path(good.user_attrs["trial_dir"]) / "trial.log").read_text()
    assert "Resuming from" in log and "checkpoint-3" in log
    straight = run(compose_cfg([*TRIAL, "lr=1e-3", "tracking.enabled=false"]), tmp_path / "straight")
    assert good.value == pytest.approx(straight, rel=1e-5)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("optuna.trial") is not None]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1]  # one run per trial, kept
    (run0,) = [r for r in children if r.data.tags["optuna.trial"] == "0"]
    assert run0.info.run_id == (Path(good.user_attrs["trial_dir"]) / "mlflow_run_id").read_text()
    assert run0.info.status == "FINISHED" and run0.data.tags["promotions"] == "1"
    assert run0.data.tags["packed"] == "true"
    assert [m.step for m in client.get_metric_history(run0.info.run_id, "eval_loss")][:2] == [3, 6]


def test_gather_packs_compatible_trials_and_says_why_others_wait_or_run_unpacked(tmp_path, caplog):
    """sweeper.pack.gather on trials as the sweeper asks them (composed, not trained)."""
    from types import SimpleNamespace

    from sweeper.pack import gather

    caplog.set_level(logging.INFO, logger="ftrun.sweeper")
    asked = iter([["rank=8"], ["rank=64"], ["batch_size=4"], ["data.packing=true"], ["lr=1e-4"]])

    def next_trial():
        overrides = next(asked, None)
        if overrides is None:
            return None
        n = next_trial.n = getattr(next_trial, "n", -1) + 1
        return SimpleNamespace(number=n), {}, overrides, tmp_path / f"trial_{n}"

    def trial_args(trial, params, extra, trial_dir):
        return [*TRIAL, "tracking.enabled=false", *extra, f"hydra.run.dir={trial_dir}"]

    composed = {}
    members, left = gather([], next_trial, trial_args, 3, composed)
    assert [m[0][0].number for m in members] == [0, 1, 4] and [p[0].number for p in left] == [2, 3]
    assert "Trial 2 cannot join the pack of trial 0: the micro-batch size differs" in caplog.text
    assert "Trial 3 cannot join the pack of trial 0" in caplog.text and "data.packing=false" in caplog.text
    # the next free slot: the waiting trials first; one that cannot be packed at all runs alone, unpacked
    members, left = gather(left[::-1], next_trial, trial_args, 3, composed)
    assert [m[0][0].number for m in members] == [3] and [p[0].number for p in left] == [2]
    assert "Trial 3 runs unpacked: run 0" in caplog.text and "a packed run needs data.packing=false" in caplog.text
    assert set(composed) == {0, 1, 2, 3, 4}  # each trial composed once


def test_sweep_auto_packs_and_a_resumed_sweep_packs_its_new_trials(tmp_path):
    """``python -m ftrun -m sweep=auto hydra.sweeper.pack=2`` as a user runs it, without the decay branches a pack
    cannot train yet (the log's advice), then again with more trials."""
    from sweeper.pack import pack_reason
    from sweeper_helpers import ftrun_multirun

    assert "add hydra.sweeper.rung_branch=null hydra.sweeper.pruner=none" in pack_reason(
        {"pack": 2, "rung_branch": 0.15}, warm=True)
    args = ["sweep=auto", "hydra.sweeper.pack=2", "hydra.sweeper.rung_branch=null", "hydra.sweeper.pruner=none", *TRIAL, "tracking.enabled=false", f"hydra.sweep.dir={tmp_path}"]
    proc = ftrun_multirun([*args, "hydra.sweeper.n_trials=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (db,) = tmp_path.glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    assert [t.user_attrs["packed_with"] for t in study.trials] == [[0, 1], [0, 1]]
    assert {"lr", "rank", "epochs"} <= set(study.trials[0].params)  # sweep=auto's space (batch_size fixed here)
    before = [t.value for t in study.trials]
    proc = ftrun_multirun([*args, "hydra.sweeper.n_trials=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [t.user_attrs["packed_with"] for t in trials[2:]] == [[2, 3], [2, 3]]
    assert [t.value for t in trials[:2]] == before  # kept, not retrained


def test_a_worker_killed_mid_pack_fails_every_member(tmp_path):
    sweeps = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "ftrun", "-m", *[a for a in TRIAL if not a.startswith("max_steps")],
           "max_steps=3000", "lr=1e-3,3e-3", "tracking.enabled=false", "hydra.sweeper.sampler=grid",
           "hydra.sweeper.pruner=none", "hydra.sweeper.pack=2", f"hydra.sweep.dir={sweeps}"]
    with open(tmp_path / "sweep.log", "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            pid = _wait_for_pack(sweeps, proc, tmp_path / "sweep.log")
            os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    (db,) = sweeps.glob("*/study.db")
    trials = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    for t in trials:
        assert f"warm worker (pid {pid}) died" in t.user_attrs["fail_reason"], t.user_attrs


def _wait_for_pack(sweeps: Path, proc, sweep_log: Path, timeout: float = 300) -> int:
    """The pid of the worker once its pack trains (its log shows the first logged loss)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before its pack trained:\n" + sweep_log.read_text()[-4000:]
        # (not a look at the study before a trial exists: opening an empty study.db makes Optuna create its tables
        # from this process too, and the sweeper's own create then fails with "table already exists")
        for db in (log.parent.parent / "study.db" for log in sweeps.glob("*/trial_0000/trial.log")):
            trials = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}").trials
            if trials and "worker_pid" in trials[0].user_attrs:
                log = Path(trials[0].user_attrs["trial_dir"]) / "trial.log"
                if log.is_file() and "Training 2 trials in one pack" in log.read_text():
                    return int(trials[0].user_attrs["worker_pid"])
        time.sleep(0.5)
    raise AssertionError("the pack never started")


def test_pack_auto_holds_as_many_trials_as_the_slots_memory_fits(tmp_path, caplog):
    """hydra.sweeper.pack=auto with a memory limit that holds two of these trials in a pack but not three: two train
    packed, the third waits (the log says why) for a member to leave."""
    from ftrun.estimate.pack import pack_fits, pack_peak

    caplog.set_level(logging.INFO, logger="ftrun.sweeper")
    cfgs = [compose_cfg([*TRIAL, "tracking.enabled=false", f"lr={lr}"]) for lr in (1e-3, 2e-3, 3e-3)]
    two, three = pack_peak(cfgs[:2], device="cpu")[0], pack_peak(cfgs, device="cpu")[0]
    assert three > two > pack_peak(cfgs[:1], device="cpu")[0]
    limit_gb = 1.1 * (two + three) / 2 / 2**30  # pack_fits keeps a 10% margin
    assert pack_fits(cfgs[:2], limit_gb * 2**30, device="cpu")[0] and not pack_fits(cfgs, limit_gb * 2**30,
                                                                                      device="cpu")[0]
    study = sweep(tmp_path, ["lr=1e-3,2e-3,3e-3"], "auto", pack="auto", memory_limit_gb=limit_gb)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    packs = [t.user_attrs.get("packed_with") for t in study.trials]
    # the third never trains beside both: alone, or joining trial 1 once trial 0 has left (if 1 still trains then)
    assert packs[:2] == [[0, 1], [0, 1]] and packs[2] in (None, [2], [1, 2]), packs
    assert "Trial 2 waits for the next free slot: a pack of 3: estimated peak" in caplog.text
