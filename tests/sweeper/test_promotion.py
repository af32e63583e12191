"""Pause and promote (hydra.sweeper.pruner=promotion): the rule on hand-made studies, and a real sweep whose best
trial pauses twice (the second time through a kill of the sweep) and ends equal to the same configuration trained
straight through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT, compose_cfg
from ftrun.contract import ATTR_PAUSED_AT, ATTR_PROMOTIONS, ATTR_TRIAL_DIR, RESULT_FILE, RUN_ID_FILE
from sweeper.promotion import PromotionPruner, Rungs, last_resort
from sweeper.study import build_pruner

# ---------------------------------------------------------------------------
# the rule


def _study(*trials):
    """A study of hand-made trials: (state, {examples seen: value}, user attrs)."""
    study = optuna.create_study(pruner=PromotionPruner(min_resource=100, reduction_factor=3))
    for state, values, attrs in trials:
        study.add_trial(create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                     params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-5, 1e-1)},
                                     intermediate_values=values, user_attrs=attrs))
    return study


def test_the_rule_is_built_from_its_short_name_and_refuses_bad_arguments():
    rule = build_pruner({"name": "promotion", "min_resource": 375, "reduction_factor": 3})
    assert isinstance(rule, PromotionPruner) and rule.min_resource == 375
    with pytest.raises(ValueError, match="reduction_factor"):
        PromotionPruner(reduction_factor=1)
    with pytest.raises(ValueError, match="min_resource"):
        PromotionPruner(min_resource=0)


def test_rungs_count_examples_and_a_trial_compares_at_its_first_report_past_each():
    rungs = Rungs(100, 3)
    assert [rungs.start(k) for k in range(3)] == [100, 300, 900]
    assert [rungs.of(s) for s in (99, 100, 299, 300, 1000)] == [None, 0, 0, 1, 2]
    t = create_trial(state=TrialState.RUNNING, intermediate_values={64: 9.0, 128: 5.0, 320: 4.0})
    assert rungs.value_at(t, 0) == 5.0 and rungs.value_at(t, 1) == 4.0 and rungs.value_at(t, 2) is None
    assert rungs.reached(t) == 1  # its last report is its first at or past 300
    t2 = create_trial(state=TrialState.RUNNING, intermediate_values={128: 5.0, 192: 4.5})
    assert rungs.reached(t2) is None  # 192 falls between rungs, after rung 0's first report


def test_a_trial_pauses_until_it_is_in_the_best_third_of_its_rung():
    # six trials at the rung of 100 examples: the best two (values 1 and 2) are promotable
    done = [(TrialState.PRUNED, {100: v}, {}) for v in (1.0, 3.0, 4.0, 5.0)]
    study = _study(*done, (TrialState.RUNNING, {100: 2.0}, {}), (TrialState.RUNNING, {100: 6.0}, {}))
    rule, frozen = study.pruner, study.get_trials()
    assert rule.prune(study, frozen[4]) is False  # second best of six: goes on at once
    assert rule.prune(study, frozen[5]) is True  # the worst: pauses
    one = _study((TrialState.RUNNING, {100: 0.1}, {}))
    assert one.pruner.prune(one, one.get_trials()[0]) is True  # alone at a rung: nothing to compare, it waits


def test_the_sweeper_promotes_the_best_paused_trial_of_the_highest_rung_first():
    paused = {ATTR_PAUSED_AT: 100}
    study = _study(
        (TrialState.RUNNING, {100: 1.0}, paused),  # 0: best at rung 0, paused there
        (TrialState.RUNNING, {100: 2.0, 300: 0.5}, {ATTR_PAUSED_AT: 300}),  # 1: paused at rung 1, alone there
        *[(TrialState.PRUNED, {100: v}, {}) for v in (3.0, 4.0, 5.0, 6.0)])
    rule = study.pruner
    assert rule.next_promotion(study).number == 0  # rung 1 has one trial (promotes none); rung 0 promotes two
    assert rule.next_promotion(study, exclude={0}) is None  # trial 1 is second best at rung 0, but not paused there
    assert last_resort(study).number == 1  # at the end with nothing complete: the highest rung's best
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1, intermediate_values={100: 0.2}))
    assert last_resort(study) is None


# ---------------------------------------------------------------------------
# a real sweep

# 8 steps of 4 x 2 examples under warmup-stable-decay, evaluated every 2 steps (16 examples) with a decay branch of
# a quarter of the steps so far; rungs at 16 and 32 examples (reduction factor 2), the run's end at 64.
TRIAL = ["scheduler=wsd", "data.num_train=64", "data.num_eval=16", "max_steps=8", "batch_size=4", "grad_accum=2",
         "train.eval_steps=2", "train.logging_steps=1", "train.save_steps=0"]
GOOD, BAD = 1e-3, 3e-2  # at the first rung the high rates are far worse than 1e-3 (which is worse than 1e-7)


def _sweep_command(sweep_dir: Path):
    return [sys.executable, "-m", "ftrun", "-m", "lr=tag(log,interval(1e-8,1e-1))", *TRIAL,
            "hydra.sweeper.n_trials=3", "hydra.sweeper.rung_branch=0.25", "hydra.sweeper.heartbeat_s=0.5",
            "hydra.sweeper.pruner={name:promotion,reduction_factor:2}", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.enqueue=[{{lr:{GOOD}}},{{lr:{BAD}}},{{lr:{BAD * 2}}}]"]


def _load(sweep_dir: Path):
    (db,) = sweep_dir.glob("*/study.db")
    return optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def promoted_sweep(tmp_path_factory, tiny_dir):
    """Trial 0 (the good rate) pauses alone at the first rung, is promoted once the worse trial 1 pauses there too,
    and pauses alone at the second rung. The sweep is killed (SIGKILL) then, and run again: trial 2's retry
    pauses at the first rung, and with nothing left to start the sweep resumes trial 0 to its end."""
    tmp = tmp_path_factory.mktemp("promotion")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    proc = subprocess.Popen(_sweep_command(tmp / "sweeps"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 400, []
    while proc.poll() is None and time.time() < deadline:  # until the sweep has recorded trial 0's second pause
        # read the study only once the sweeper has made it (its first trial's directory exists): opening a
        # study.db whose schema is still being written would race the sweeper to create it
        if list((tmp / "sweeps").glob("*/trial_0000")):
            killed = _load(tmp / "sweeps").trials
            if killed and killed[0].user_attrs.get(ATTR_PAUSED_AT) == 32:
                break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(_sweep_command(tmp / "sweeps"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"tmp": tmp, "killed": killed, "study": _load(tmp / "sweeps"), "log": out.stderr,
            "uri": env["MLFLOW_TRACKING_URI"]}


def test_a_promoted_trial_ends_as_if_trained_straight_through(promoted_sweep, tmp_path):
    from ftrun.train import run

    trial = promoted_sweep["study"].trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[ATTR_PROMOTIONS] == 2
    assert sorted(trial.intermediate_values) == [16, 32, 48, 64]  # every evaluation reported once, across pauses
    straight = tmp_path / "straight"
    run(compose_cfg([*TRIAL, f"lr={GOOD}", "tracking.enabled=false"]), straight)
    alone = json.loads((straight / RESULT_FILE).read_text())
    promoted = json.loads((Path(trial.user_attrs[ATTR_TRIAL_DIR]) / RESULT_FILE).read_text())
    assert promoted["global_step"] == alone["global_step"] == 8
    assert promoted["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-6, abs=0)
    assert trial.value == pytest.approx(alone["eval_loss"], rel=1e-6, abs=0)
    # a decay branch at each rung only (16 and 32 examples: one step each at a quarter of 2 and 4 steps), none at
    # the evaluation of 48 examples; the study counts the branches of every segment
    assert trial.user_attrs["branch_steps"] == 2


def test_paused_trials_survive_a_kill_and_the_rest_end_pruned_without_checkpoints(promoted_sweep):
    killed = {t.number: t for t in promoted_sweep["killed"]}
    assert killed[0].state == TrialState.RUNNING and killed[0].user_attrs[ATTR_PAUSED_AT] == 32
    assert killed[1].state == TrialState.RUNNING and killed[1].user_attrs[ATTR_PAUSED_AT] == 16
    trials = promoted_sweep["study"].trials
    states = {t.number: t.state for t in trials}
    assert states[1] == TrialState.PRUNED and "not promoted" in trials[1].user_attrs["fail_reason"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert not list(Path(t.user_attrs[ATTR_TRIAL_DIR]).glob("checkpoint-*")), t.number
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert retried or states.get(2) == TrialState.PRUNED  # trial 2, killed mid-run, was retried (or had paused)


def test_one_mlflow_run_per_trial_through_pauses_and_the_summary_says_so(promoted_sweep):
    from mlflow import MlflowClient

    study = promoted_sweep["study"]
    client = MlflowClient(tracking_uri=promoted_sweep["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    children = [r for r in runs if r.data.tags.get("optuna.trial") is not None]
    by_trial = {}
    for r in children:
        by_trial.setdefault(int(r.data.tags["optuna.trial"]), []).append(r)
    assert all(len(v) == 1 for v in by_trial.values()), {k: len(v) for k, v in by_trial.items()}
    (run0,) = by_trial[0]
    trial0 = study.trials[0]
    assert run0.info.run_id == (Path(trial0.user_attrs[ATTR_TRIAL_DIR]) / RUN_ID_FILE).read_text()
    assert run0.info.status == "FINISHED" and run0.data.tags["promotions"] == "2"
    assert [m.step for m in client.get_metric_history(run0.info.run_id, "eval_loss")][:3] == [2, 4, 6]
    (run1,) = by_trial[1]
    assert run1.info.status == "FINISHED" and run1.data.tags["pruned"] == "true"
    summary = (Path(trial0.user_attrs[ATTR_TRIAL_DIR]).parent / "summary.md").read_text()
    assert "resumed from a rung after pausing" in summary and "promoted 2x after pausing" in summary
    assert "paused at 16 examples and not promoted before the sweep ended" in summary


def test_a_sweep_whose_budget_is_spent_before_any_trial_ends_still_finishes_its_best_paused_trial(tmp_path):
    """A budget stops new trials, not started ones: trial 0 pauses alone at each rung after the budget
    (1 trial-second) is spent, and is resumed each time, to its end, rather than recorded PRUNED with its
    checkpoints deleted, so the sweep has a result. Promoted twice with a decay branch at each rung and no kill,
    it ends as the same configuration trained straight through (the fixture above holds it with a kill)."""
    from ftrun.train import run
    from sweeper_helpers import ftrun_multirun

    out = ftrun_multirun(["lr=choice(1e-3,3e-2)", *TRIAL, "tracking.enabled=false", "hydra.sweeper.n_trials=2",
                          "hydra.sweeper.pruner={name:promotion,reduction_factor:2}", "hydra.sweeper.budget_trial_s=1",
                          "hydra.sweeper.rung_branch=0.25", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    (trial,) = _load(tmp_path / "sweep").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[ATTR_PROMOTIONS] == 2
    assert sorted(trial.intermediate_values) == [16, 32, 48, 64]
    assert trial.user_attrs["branch_steps"] == 2
    log = out.stdout + out.stderr
    assert "the compute budget is spent" in log
    assert "promoted from the rung of 16 examples" in log and "promoted from the rung of 32 examples" in log
    run(compose_cfg([*TRIAL, f"lr={trial.params['lr']}", "tracking.enabled=false"]), tmp_path / "straight")
    alone = json.loads((tmp_path / "straight" / RESULT_FILE).read_text())
    assert trial.value == pytest.approx(alone["eval_loss"], rel=1e-6, abs=0)


def test_paused_and_promoted_trials_in_the_summary_the_board_and_the_analysis_report(tmp_path):
    from types import SimpleNamespace

    from analysis.store import run_state
    from analysis.sweep import _trials_section
    from ftrun.board.jobs import read_trials
    from sweeper.summary import build_summary

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="shown", storage=url)
    lr = {"lr": FloatDistribution(1e-5, 1e-1)}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.5, params={"lr": 1e-3}, distributions=lr,
                                 intermediate_values={16: 3.0, 48: 2.0}, user_attrs={ATTR_PROMOTIONS: 2,
                                                                                    "duration_s": 30.0}))
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"lr": 3e-2}, distributions=lr,
                                 intermediate_values={16: 6.25}, user_attrs={ATTR_PAUSED_AT: 16, "duration_s": 8.0}))
    ended = "paused at 48 examples and not promoted before the sweep ended"
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 1e-2}, distributions=lr,
                                 intermediate_values={16: 4.0, 48: 3.5},
                                 user_attrs={ATTR_PROMOTIONS: 1, "fail_reason": ended, "duration_s": 12.0}))

    summary = "\n".join(build_summary(study, ["eval_loss"], ["python", "-m", "ftrun"])["lines"])
    assert "1 complete, 1 pruned, 0 failed, 1 paused at a rung; 2 resumed from a rung after pausing" in summary
    assert f"| 2 | PRUNED | 3.5 @48 | lr=0.01 | 12 | promoted 1x after pausing; {ended} |" in summary
    assert "| 1 | PAUSED | 6.25 @16 | lr=0.03 | 8 | paused at 16 examples, waiting to be promoted |" in summary
    assert "| 0 | COMPLETE | 1.5 | lr=0.001 | 30 | promoted 2x after pausing |" in summary
    assert "Spent 50 trial-seconds" in summary  # a paused trial's seconds count as spent

    rows, _, _ = read_trials("shown", url)
    assert [r[:4] for r in rows] == [[0, "COMPLETE (promoted 2x)", "1.5000", ""], [1, "PAUSED", "6.2500", 16],
                                     [2, "PRUNED (promoted 1x)", "", 48]]
    assert rows[1][5] == 8.0

    html = " ".join(_trials_section(study, ["eval_loss"], {}, {}))
    assert "paused at 16 examples, waiting to be promoted" in html and "promoted 2x after pausing" in html
    assert f"promoted 1x after pausing; {ended}" in html

    def mlflow_run(status, tags):
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))

    assert run_state(mlflow_run("SCHEDULED", {"paused_at_step": "2"})) == "paused"
    assert run_state(mlflow_run("RUNNING", {})) == "running"
