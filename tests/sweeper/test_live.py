"""What a sweep shows: in a terminal, a live table of its trials under N/M, the best so far with its
rerun command and the budget; without one, a plain status line per finished trial."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from conftest import ROOT
from sweeper.live import SweepView, TrialRow
from sweeper_helpers import FAKE

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_sweep_in_a_terminal_shows_the_trial_table(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import optuna

    args = ["-m", "ftrun", "-m", "lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2", f"hydra.sweeper.command=[{','.join(FAKE)}]", "hydra.sweeper.study_name=live",
            "hydra.sweeper.budget_trial_s=600", "tracking.enabled=false", f"output_root={tmp_path}"]
    env = {**os.environ, "TERM": "xterm-256color", "FAKE_SLEEP": "1"}
    child = pexpect.spawn(sys.executable, args, env=env, cwd=str(ROOT), dimensions=(50, 200), timeout=180,
                          encoding="utf-8", codec_errors="replace")
    child.expect(pexpect.EOF)
    child.close()
    shown = ANSI.sub("", child.before)
    assert child.exitstatus == 0, shown[-3000:]
    study = optuna.load_study(study_name="live", storage=f"sqlite:///{tmp_path / 'sweeps' / 'live' / 'study.db'}")
    best = study.best_trial
    frames = shown.split("Sweep live: ")
    assert any(f.startswith("2/4 trials done") for f in frames)  # N/M while it ran
    last = frames[-1]
    assert last.startswith("4/4 trials done (0 running, 0 pruned, 0 failed)")
    assert re.search(rf"best so far: trial {best.number}, eval_loss {best.value:.4g}: python -m ftrun .*"
                     rf"lr={best.params['lr']}", last)
    assert re.search(r"budget: \d+ of 600 trial-s \(budget_trial_s\)", last)
    assert re.search(r"┃ trial ┃ state +┃ eval_loss ┃ params +┃ +time ┃", last)  # the table
    for t in study.trials:  # one row per trial, as Optuna recorded it (the best marked *)
        mark = r" \*" if t.number == best.number else ""
        assert re.search(rf"│ +{t.number}{mark} │ COMPLETE │ {t.value:.4g} +│ lr={t.params['lr']:.4g}", last), last
    assert "RUNNING" in shown  # a trial showed while it ran


def test_the_header_counts_the_best_the_budget_and_the_eta():
    view = SweepView("s", 6, "eval_accuracy", "maximize", budget_trial_s=100, mode="quiet")
    now = time.time()
    view.start([TrialRow(0, "COMPLETE", {"lr": 0.1}, ["lr=0.1"], 0.5, now - 20, 10.0)])
    view.trial_started(1, {"lr": 0.01}, ["lr=0.01"])
    view.trial_started(2, {"lr": 0.001}, ["lr=0.001"])
    view.trial_finished(2, "COMPLETE", 0.7, 10.0)
    view.trial_finished(1, "FAIL", None, 3.0, "exit status 1")
    first, best, budget = view.header()
    assert first.startswith("Sweep s: 2/6 trials done (0 running, 0 pruned, 1 failed), ETA 0:00:20")
    assert best == "best so far: trial 2, eval_accuracy 0.7: python -m ftrun lr=0.001"  # maximize
    assert budget.startswith("budget: 23 of 100 trial-s")
