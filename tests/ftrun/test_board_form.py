"""The board's form is the CLI's schema: fields, help and defaults come from the config; the overrides it
builds compose to what the form shows; the commands it starts report how they ended. No browser here
(test_board.py drives the page)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, compose_cfg

from ftrun.board import form, jobs
from ftrun.cli import field_docs
from ftrun.config import MethodConfig, OptimizerConfig


def test_fields_come_from_the_schema():
    lr = form.field("lr")
    assert (lr.home, lr.kind, lr.help) == ("optimizer.lr", "float", field_docs(OptimizerConfig)["lr"])
    assert form.field("method.target_modules").kind == "list"
    assert form.field("precision").choices == ("fp32", "fp16", "bf16", "pure_bf16")
    assert set(form.field("method").choices) >= {"lora", "qlora", "full", "freeze"}
    assert form.field("method.bits").help == field_docs(MethodConfig)["bits"]
    assert form.field("data.max_samples").optional
    assert all(f.help for f in form.fields())  # every field on the page has its schema's help


def test_overrides_compose_to_what_the_form_shows():
    values = form.defaults({})
    assert form.to_overrides(values) == []  # the defaults are `ftrun` with nothing to override
    values.update({"method": "qlora", "lr": 1e-4, "method.target_modules": "[q_proj,v_proj]", "data.packing": True,
                   "data.max_samples": "100", "epochs": 3.0})
    ov = form.to_overrides(values, "train.save_steps=0")
    assert ov[0] == "method=qlora" and ov[-1] == "train.save_steps=0" and "epochs=3" not in " ".join(ov)
    cfg = compose_cfg(ov)
    assert (cfg.method.name, cfg.optimizer.lr, list(cfg.method.target_modules)) == ("qlora", 1e-4, ["q_proj", "v_proj"])
    assert cfg.data.packing is True and cfg.data.max_samples == 100
    assert form.command(form.run_argv(ov, multirun=True)).startswith("python -m ftrun -m method=qlora lr=0.0001 ")


def test_a_new_preset_moves_only_the_knobs_left_at_the_old_presets_value():
    values = form.defaults({})
    values.update({"data": "alpaca", "lr": 1e-4})
    assert form.regroup({"data": "letters"}, values) == {"data.val_size": 0.1}  # alpaca holds out 10%
    values["data.val_size"] = 0.2  # set by the user: stays
    assert form.regroup({"data": "letters"}, values) == {}


def test_check_gives_the_cli_message_and_the_sweepers():
    assert form.check(["lr=1e-4"]) is None
    assert "lr=-5: lr must be > 0" in form.check(["lr=-5"])
    assert "cannot parse" in form.check_sweep([], ["lr=interval(1e-4"], [])
    assert "no search space" in form.check_sweep([], [], ["hydra.sweeper.n_trials=4"])
    assert form.check_sweep([], ["lr=tag(log,interval(1e-4,1e-2))"], ["hydra.sweeper.n_trials=4"]) is None


def test_a_failed_command_reports_its_error_line_and_status():
    job = jobs.Job([sys.executable, "-c", "import sys; print('loading'); print('[t][ERROR] - invalid configuration:');"
                    "print('  lr=-5: lr must be > 0'); sys.exit(2)"])
    assert job.wait(60)
    assert job.returncode == 2
    assert job.failure() == "[t][ERROR] - invalid configuration:\n  lr=-5: lr must be > 0"


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    """A child that ignores SIGTERM and holds the output pipe after its parent obeyed: Stop still ends the job."""
    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child ready', flush=True); "
             "time.sleep(600)")
    job = jobs.Job([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                    f"{child!r}]); time.sleep(600)"])
    while "child ready" not in job.lines:
        assert not job.wait(0.05), job.lines
    job.stop(grace_s=1)
    assert not job.wait(0.5)  # the parent died of SIGTERM, but the child keeps the pipe open: not ended yet
    assert job.wait(60) and job.stopped
    assert job.returncode == -15  # the command itself obeyed SIGTERM
    assert "killed with SIGKILL" in job.lines[-1]


def test_a_stopped_run_that_left_its_mlflow_run_running_is_recorded_killed(tmp_path):
    """A run killed by SIGKILL after the grace cannot end its MLflow run: the board records it KILLED, with why."""
    from mlflow.tracking import MlflowClient

    from ftrun.contract import TAG_FAIL_REASON

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    done_id = client.create_run("0").info.run_id  # another run the log names, already ended: left as it is
    client.set_terminated(done_id, "FINISHED")
    say = [f"[t][ftrun.tracking][INFO] - MLflow: run lora-x ({i}) in experiment 'e' at {uri}" for i in (run_id, done_id)]
    job = jobs.Job([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                    f"print({say[0]!r}); print({say[1]!r}, flush=True); time.sleep(600)"])
    while len(job.lines) < 2:
        assert not job.wait(0.05), job.lines
    job.stop(grace_s=1)
    assert job.wait(60) and job.returncode == -9
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and "stopped from the board" in run.data.tags[TAG_FAIL_REASON]
    assert client.get_run(done_id).info.status == "FINISHED"
    assert job.lines[-1] == f"(MLflow run {run_id} was left RUNNING: recorded KILLED)"


def test_a_run_killed_from_outside_is_recorded_failed_with_the_signal(tmp_path):
    """The kernel's OOM killer (SIGKILL) gives a run no chance to end its MLflow run: the board records it FAILED."""
    from mlflow.tracking import MlflowClient

    from ftrun.contract import TAG_FAIL_REASON

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    say = f"[t][ftrun.tracking][INFO] - MLflow: run lora-x ({run_id}) in experiment 'e' at {uri}"
    job = jobs.Job([sys.executable, "-c", f"import os, signal; print({say!r}, flush=True); "
                    "os.kill(os.getpid(), signal.SIGKILL)"])
    assert job.wait(60) and job.returncode == -9 and not job.stopped
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "killed by signal 9" in run.data.tags[TAG_FAIL_REASON]


def test_a_run_is_read_back_from_its_files(tmp_path):
    lines = ["[x][INFO] - Run 'lora-x' (stage sft) in /tmp/somewhere/run",
             "[x][ftrun.progress][INFO] - step 3/8 (38%) · epoch 0.75 · loss 2.5 · lr 0.001 · 90 tok/s · ETA 0:00:05"]
    assert str(jobs.Job.run_dir(type("J", (), {"lines": lines})())) == "/tmp/somewhere/run"
    assert jobs.last_epoch(lines) == 0.75
    view = jobs.read_run(tmp_path, lines, None)
    assert (view.step, view.total) == (3, 8)
    from ftrun.board.train_tab import progress_html

    assert 'value="0.375"' in progress_html(view, None, 1)  # the run's own step count when max_steps is unset
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"loss": 3.0, "step": 1}, {"loss": 2.0, "step": 2}, {"eval_loss": 2.5, "step": 2}]}))
    assert jobs.curve(tmp_path, None) == [(1, "train_loss", 3.0), (2, "train_loss", 2.0), (2, "eval_loss", 2.5)]
    (tmp_path / "result.json").write_text(json.dumps({"status": "diverged", "reason": "loss is nan at step 3"}))
    assert jobs.result_text(jobs.read_result(tmp_path)) == "diverged: loss is nan at step 3"


def test_ftrun_board_is_a_subcommand_of_the_console_script():
    out = subprocess.run([sys.executable, "-c", "import sys; from ftrun.__main__ import main; sys.argv[0] = 'ftrun'; main()",
                          "board", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--lang {en,zh}" in out.stdout  # the board's own options, not Hydra's


def test_every_field_on_the_board_has_chinese_help():
    """The Chinese UI shows each field's help in Chinese: a field added to the page without a translation fails here."""
    import re

    from ftrun.board import sweep_tab
    from ftrun.board.app import Board
    from ftrun.board.locales import HELP_ZH, help_text

    shown = [*form.TRAIN_KEYS, *sweep_tab.SEARCHABLE, *(f"hydra.sweeper.{k}" for k in sweep_tab.SETTINGS),
             "sweep.preset"]
    missing = [k for k in shown if not re.search(r"[\u4e00-\u9fff]", HELP_ZH.get(k, ""))]
    assert not missing, f"no Chinese help in ftrun/board/locales.py HELP_ZH for: {missing}"
    assert help_text("lr", "en", form.field("lr").help) == form.field("lr").help
    board = Board()
    assert board.help("lr", form.field("lr").help) == form.field("lr").help
    board.lang = "zh"
    assert board.help("rank", form.field("rank").help) == HELP_ZH["rank"]
