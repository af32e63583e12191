"""Issue 27: every bad input, for every key, ends in one clear message (bench/bad_inputs.py, CI-sized).

Every key of the run's schema and every ``hydra.sweeper`` setting has cases derived from its type
(a key added with a type that gives none fails here); every case is refused in process (exit 2, its key
named) through the command line's checks; a sample of each entry point runs as a real subprocess: exit 2,
no traceback, nothing loaded first, nothing left behind.
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "bench" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    paths = bench.make_paths(tmp_path_factory.mktemp("bad_input_paths"))
    return bench.all_cases(paths)


def test_every_schema_key_and_sweeper_setting_has_cases(cases):
    from ftrun.config import Config
    from ftrun.config.schema_checks import leaf_keys
    from sweeper.config import FtrunSweeperConf

    keys = {k for k, _ in leaf_keys(Config)}
    settings = {f"hydra.sweeper.{k}" for k, _ in leaf_keys(FtrunSweeperConf) if not k.startswith("_")}
    covered = {c.key for c in cases}
    assert keys - covered == set(), "run keys without cases: give their type bad values in bench/bad_inputs.py"
    assert settings - covered == set(), "sweeper settings without cases: add them to sweeper_cases()"
    kinds = {c.kind for c in cases}
    assert {"wrong type", "out of range", "empty string", "nonexistent path", "directory for a file",
            "file for a directory", "unknown choice", "reversed interval", "negative count", "not a model"} <= kinds


def test_every_run_key_and_sweeper_case_is_refused_with_its_key_named(cases):
    rows = [(c, bench.check_in_process(c, fast=True)) for c in cases if c.entry in ("run", "sweep")]
    assert len(rows) > 250
    wrong = [f"{' '.join(c.args)} -> {r['status']}: {r['message'][:160]}" for c, r in rows
             if r["status"] != 2 or not r["names_key"]]
    assert wrong == [], "\n".join(wrong)


def test_the_fast_path_matches_a_full_compose(cases):
    """The in-process test applies each case's last override to a composed config; a sample composed
    from scratch, as the command line does, says the same."""
    sample = [c for c in cases if c.entry in ("run", "sweep")][::40]
    for case in sample:
        fast, full = bench.check_in_process(case, fast=True), bench.check_in_process(case)
        assert (fast["status"], fast["names_key"]) == (full["status"], full["names_key"]), case.args


def test_issue_27s_three_cases_end_in_one_message(tmp_path):
    """A model folder without config.json, a reversed interval and n_trials=-1, as real commands."""
    rows = _assert_refused_as_subprocesses(bench.issue_cases(bench.make_paths(tmp_path / "paths")), tmp_path)
    assert "no config.json" in rows[0]["message"] and "lr=interval(1e-2,1e-4): interval needs start < end" in \
        rows[1]["message"] and "hydra.sweeper.n_trials=-1: must be >= 1" in rows[2]["message"]


def test_a_sample_of_every_entry_point_ends_in_one_message(tmp_path, cases):
    """One case per entry point, of the kinds it must refuse while reading its arguments."""
    sample = bench.cli_sample(cases, 1, order=bench.SAMPLE_ORDER)
    assert {c.entry for c in sample} == {"run", "sweep", "estimate", "data_stats", "export", "predict", "chat",
                                         "serve", "board"}
    _assert_refused_as_subprocesses(sample, tmp_path)


def _run(case, work):
    return bench.run_subprocess(case, work, timeout_s=45 if case.entry == "board" else 240)


def _assert_refused_as_subprocesses(sample, work):
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda c: (c, _run(c, work)), sample))
    wrong = [f"{c.entry} {' '.join(c.args)} -> exit {r['status']}, traceback {r['traceback']}, loaded {r['loaded']}, "
             f"key named {r['names_key']}: {r['message'][-300:]}" for c, r in rows if not bench.refused(r)]
    assert wrong == [], "\n".join(wrong)
    left = bench.leftovers(work)
    assert left == {"run_dirs": [], "studies": [], "mlflow_running": 0, "orphan_trials": 0}
    return [r for _, r in rows]
