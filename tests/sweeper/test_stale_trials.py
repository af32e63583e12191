"""Stale-trial recovery: Optuna's private API in one module, pinned to the Optuna it was written for,
and a trial found finished after its sweeper died is recorded by the same rule as one that ends under it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose_cfg
from sweeper import stale_trials

PRIVATE = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b|optuna\.storages\._|_get_stale_trial_ids")


def test_written_for_the_installed_optuna():
    assert stale_trials.optuna_version_mismatch() is None, stale_trials.optuna_version_mismatch()


def test_optunas_private_api_is_used_only_in_stale_trials():
    users = [str(p.relative_to(ROOT)) for d in ("ftrun", "sweeper", "analysis", "hydra_plugins", "bench")
             for p in sorted((ROOT / d).rglob("*.py")) if PRIVATE.search(p.read_text())]
    assert users == ["sweeper/stale_trials.py"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def sweep(tmp_path):
    """A sweeper of this host on a SQLite study, opened but not running."""
    from sweeper.settings import read_settings
    from sweeper.space import parse_search_space
    from sweeper.sweep import Sweep

    space = parse_search_space({}, ["lr=tag(log,interval(1e-5,1e-1))"], None)
    conf = {"study_name": "s", "command": [sys.executable, "-c", "pass"], "mlflow": False}
    sweep = Sweep(read_settings(conf, space, compose_cfg(["tracking.enabled=false"]), tmp_path))
    sweep.open()
    return sweep


def _left_running(sweep, tmp_path: Path, result) -> object:
    """A RUNNING trial whose sweeper (on this host) died after the trial wrote ``result`` as its result.json."""
    trial = sweep.study.ask()
    trial_dir = tmp_path / "trial_0000"
    trial_dir.mkdir()
    (trial_dir / "result.json").write_text(json.dumps(result))
    for key, value in {"trial_dir": str(trial_dir), "sweeper_host": sweep.s.host,
                       "sweeper_pid": _dead_pid()}.items():
        trial.set_user_attr(key, value)
    return trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks as a sweeper does
@pytest.mark.parametrize("result", [{"global_step": 4}, {"eval_loss": None, "train_loss": None}],
                         ids=["objective-missing", "objective-null"])
def test_a_recovered_trial_without_its_objective_fails_with_the_reason(sweep, tmp_path, result):
    _left_running(sweep, tmp_path, result)
    sweep._recover_left_behind()  # before the one classifier: KeyError / TypeError out of the sweep
    (t,) = sweep.study.trials
    assert t.state.name == "FAIL"
    assert t.user_attrs["fail_reason"].startswith(f"result.json has no {sweep.s.objectives[0]}")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_recovered_finished_trial_keeps_its_value(sweep, tmp_path):
    objective = sweep.s.objectives[0]
    _left_running(sweep, tmp_path, {objective: 0.25})
    sweep._recover_left_behind()
    (t,) = sweep.study.trials
    assert t.state.name == "COMPLETE" and t.value == 0.25
