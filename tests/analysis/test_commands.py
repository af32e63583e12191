"""Each analysis command on a real sweep: a sqlite Optuna study whose five trials are tiny ftrun
runs nested under a parent run in a sqlite MLflow store (built once for this module)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, compose_cfg
from ftrun.compose import compose, conf_dir

import sweep_study
from analysis import best, store
from analysis.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_dir):
    return sweep_study.build(tmp_path_factory.mktemp("sweep"))


def run_cli(sweep, capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["--tracking-uri", sweep.tracking_uri, *argv]) == 0
    return capsys.readouterr().out


def test_the_sweep_has_every_state(sweep):
    study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    pruned = study.trials[2]
    # stopped at its first evaluation (step 3), reported under the examples seen by then
    assert max(pruned.intermediate_values) == 3 * 8  # batch_size=8 (sweep_study.STEPS)


# ---------------------------------------------------------------------------
# compare


def test_compare_csv(sweep, capsys):
    out = run_cli(sweep, capsys, "compare", "--sweep", sweep.study_name, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["run_id"] for r in rows} == set(sweep.run_ids.values())  # the parent run is not a row
    by_trial = {n: next(r for r in rows if r["run_id"] == rid) for n, rid in sweep.run_ids.items()}
    assert [by_trial[n]["state"] for n in range(5)] == ["finished", "finished", "pruned", "failed", "finished"]
    # params that differ are columns; params that are the same everywhere (max_steps) are not
    header = rows[0].keys()
    assert {"lr", "rank", "alpha"} <= set(header) and "max_steps" not in header
    assert "optimizer.lr" not in header  # the same values as lr: shown once
    assert float(by_trial[4]["lr"]) == 8e-3 and by_trial[4]["rank"] == "8"
    for col in ("eval_loss", "best_eval_loss", "train_time_s", "tokens_per_s", "peak_memory_mb"):
        assert float(by_trial[0][col]) > 0
    assert by_trial[0]["trainable_params"] not in ("", "0")
    assert "failed" in by_trial[3]["flags"]
    # default order: best eval loss first; the trial that failed before training has none and comes last
    losses = [float(r["best_eval_loss"]) for r in rows if r["best_eval_loss"]]
    assert losses == sorted(losses) and len(losses) == 4
    assert rows[-1]["run_id"] == sweep.run_ids[3]


def test_compare_sort_filter_and_formats(sweep, capsys):
    out = run_cli(sweep, capsys, "compare", "--sweep", sweep.parent_run_id, "--format", "csv", "--sort", "lr",
                  "--desc", "--status", "finished", "--status", "pruned")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [float(r["lr"]) for r in rows] == [8e-3, 6e-3, 3e-3, 1.2e-4]
    out = run_cli(sweep, capsys, "compare", "--experiment", sweep_study.EXPERIMENT, "--tag", "optuna.trial=2",
                  "--format", "markdown")
    lines = out.splitlines()
    assert lines[0].startswith("| run | name | state |") and lines[1].startswith("|---|")
    assert len([x for x in lines if x.startswith("| ")]) == 2 and "| pruned |" in lines[2]
    out = run_cli(sweep, capsys, "compare", "--experiment", sweep_study.EXPERIMENT, "--sort", "train_time_s")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "name", "state"] and set(lines[1]) <= {"-", " "}
    table = lines[2:lines.index("")] if "" in lines else lines[2:]
    assert len(table) == 5, out  # one row per trial (the sweep's parent run is not a row)
    # the sweep's study is found from the parent run: the range-edge finding is shown too
    assert "range-edge: best lr=0.008 is at the upper edge" in run_cli(sweep, capsys, "compare", "--sweep",
                                                                          sweep.study_name)


def test_compare_rejects_an_unknown_column(sweep, capsys):
    assert main(["--tracking-uri", sweep.tracking_uri, "compare", "--sort", "nope"]) == 2
    assert "no such column" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# curves


def test_curves_png(sweep, capsys, tmp_path):
    path = tmp_path / "curves.png"
    out = run_cli(sweep, capsys, "curves", *sweep.run_ids.values(), "-o", str(path))
    assert "5 runs" in out and path.read_bytes()[:8] == PNG_MAGIC
    path2 = tmp_path / "top2.png"
    assert "2 runs" in run_cli(sweep, capsys, "curves", "--sweep", sweep.study_name, "--top", "2", "-o", str(path2))
    assert path2.read_bytes()[:8] == PNG_MAGIC


def test_tokens_seen_logged_and_estimated(sweep):
    c = store.client(sweep.tracking_uri)
    rec = store.to_record(c.get_run(sweep.run_ids[0]))
    store.load_histories(c, [rec])
    logged = store.tokens_seen_at(rec, [2, 4, 12])
    assert logged[0] > 0 and logged == sorted(logged)
    # a run without the tokens_seen metric gets an estimate from tokens/s and the log times
    del rec.histories["tokens_seen"]
    tps = c.get_metric_history(rec.run_id, "tokens_per_second")
    rec.histories["_tps_time"] = sorted((m.step, m.timestamp / 1000.0) for m in tps)
    estimate = store.tokens_seen_at(rec, [2, 4, 12])
    assert estimate is not None and estimate == sorted(estimate) and estimate[-1] > 0


# ---------------------------------------------------------------------------
# sweep report


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images, self.headings, self.text = [], [], [], []
        self._in_h = False

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_h = tag in ("h1", "h2")

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"
        self._in_h = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h:
            self.headings.append(data)


def test_sweep_report(sweep, capsys, tmp_path):
    out_dir = tmp_path / "report"
    out = run_cli(sweep, capsys, "sweep", "--study", sweep.study_name, "--storage", sweep.storage,
                  "-o", str(out_dir))
    index = out_dir / "index.html"
    assert str(index) in out
    page = _Page()
    page.feed(index.read_text())
    page.close()
    assert page.stack == []  # every tag closed
    text = " ".join(page.text)
    assert {"Best", "Trials and compute", "Diagnostics", "Parameter importances", "Figures", "Trials"} <= set(
        page.headings)
    for name in ("history.png", "intermediate.png", "parallel.png", "importances.png", "slice.png", "curves.png"):
        assert name in page.images
    for src in page.images:
        assert (out_dir / src).read_bytes()[:8] == PNG_MAGIC
    assert "Trial 4: eval_loss = 2." in text
    # counts, compute used and saved
    assert "complete 3" in " ".join(text.split()) and "pruned 1" in " ".join(text.split())
    assert "failed 1" in " ".join(text.split())
    assert "Pruning stopped 1 trials early and saved about" in text
    # diagnostics: the best lr sits at the top of the range
    assert "range-edge" in text and "widen the range above 0.01" in text
    # logged to the parent run
    c = store.client(sweep.tracking_uri)
    logged = {Path(a.path).name for a in c.list_artifacts(sweep.parent_run_id, "sweep_report")}
    assert {"index.html", "history.png"} <= logged


def test_sweep_report_found_without_storage_and_for_two_objectives(sweep, capsys, tmp_path):
    # without --storage: the parent run names the storage
    run_cli(sweep, capsys, "sweep", "--study", sweep.study_name, "-o", str(tmp_path / "a"), "--no-mlflow")
    assert (tmp_path / "a" / "index.html").is_file()
    # a two-objective study in the same storage: Pareto front instead of a single best
    study = optuna.create_study(study_name="pareto", storage=sweep.storage, directions=["minimize", "minimize"])
    study.set_metric_names(["eval_loss", "peak_memory_mb"])
    study.optimize(lambda t: ((x := t.suggest_float("x", 0, 1)) ** 2, (1 - x) ** 2), n_trials=12)
    run_cli(sweep, capsys, "sweep", "--study", "pareto", "--storage", sweep.storage, "-o", str(tmp_path / "p"))
    page = _Page()
    page.feed((tmp_path / "p" / "index.html").read_text())
    assert "pareto_front.png" in page.images and "trials on the Pareto front" in " ".join(page.text)
    assert (tmp_path / "p" / "pareto_front.png").read_bytes()[:8] == PNG_MAGIC


def test_missing_study_is_a_clear_error(sweep, capsys):
    assert main(["--tracking-uri", sweep.tracking_uri, "sweep", "--study", "nope", "--storage", sweep.storage]) == 2
    assert "no Optuna study 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# best


def test_best_writes_an_experiment_that_reruns_the_trial(sweep, capsys, tmp_path):
    from ftrun.train import run

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    out = run_cli(sweep, capsys, "best", "--study", sweep.study_name, "--conf-dir", str(conf))
    assert "best trial 4" in out and "checked: the overrides compose to the recorded config" in out
    assert "rerun: python -m ftrun +experiment=best_lora_search" in out and "warning" not in out
    path = conf / "experiment" / "best_lora_search.yaml"
    assert path.read_text().startswith("# @package _global_")
    # rerun it, as `python -m ftrun +experiment=best_lora_search` composes it
    cfg = compose(["+experiment=best_lora_search", f"output_root={tmp_path}"], config_dir=conf)
    study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage)
    value = run(cfg, tmp_path / "rerun")
    assert value == pytest.approx(study.best_value, rel=1e-3, abs=1e-4)


def test_best_print_and_overrides_rebuilt_from_the_record(sweep, capsys):
    out = run_cli(sweep, capsys, "best", "--study", sweep.study_name, "--print")
    command = out.strip().splitlines()[-1]
    assert command.startswith("python -m ftrun ") and "lr=0.008" in command and "max_steps=12" in command
    assert "tracking.experiment" not in command and "output_root" not in command  # where, not what
    # with only the searched params to start from, the fixed settings come back from the recorded config
    c = store.client(sweep.tracking_uri)
    recorded = store.to_record(c.get_run(sweep.run_ids[4])).params
    overrides, diff = best.exact_overrides(["lr=0.008", "rank=8"], recorded)
    assert diff == {} and {"max_steps=12", "data.num_train=64", "train.eval_steps=3"} <= set(overrides)
    # a wrong group choice is switched back as a group, not field by field
    overrides, diff = best.exact_overrides(["method=full", "lr=0.008"], recorded)
    assert diff == {} and "method=lora" in overrides


def test_best_of_several_objectives_is_picked_on_the_chosen_one():
    study = optuna.create_study(directions=["minimize", "maximize"])
    for x in (0.1, 0.5, 0.9):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("x", 0, 1) ** 0.5), n_trials=3)
    assert best.best_trial(study, 0).params["x"] == 0.1
    assert best.best_trial(study, 1).params["x"] == 0.9


@pytest.mark.parametrize("value", [None, True, 3, 1e-05, 0.008, "letters", "a b", "null", ["all-linear"],
                                   {"power": 2.0}, [1, "x y"]])
def test_hydra_value_round_trip(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"key={best.hydra_value(value)}").value()
    assert parsed == value


def test_split_overrides_keeps_quotes_and_brackets():
    text = "lr=0.001 method.target_modules=[q_proj, v_proj] name='a b' +x={a: 1}"
    assert best.split_overrides(text) == ["lr=0.001", "method.target_modules=[q_proj, v_proj]", "name='a b'",
                                          "+x={a: 1}"]


def test_help_is_fast_and_light():
    code = ("import sys, runpy; sys.argv=['analysis','--help']\n"
            "try: runpy.run_module('analysis', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy=[m for m in ('mlflow','optuna','matplotlib','torch','transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "compare" in out.stdout and "HEAVY []" in out.stdout
