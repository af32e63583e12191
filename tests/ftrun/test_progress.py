"""What a run shows: one live progress line in a terminal, plain timestamped lines in a file, and
neither the Trainer's raw dicts; ``--quiet`` / ``--verbose`` as Hydra overrides."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from ftrun.terminal import QUIET_OVERRIDES, VERBOSE_OVERRIDES, verbosity_arguments
from tests.conftest import FAST

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TIMESTAMPED = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]\[ftrun\.progress\]\[INFO\] - ")


def _args(tmp_path, *extra):
    return [*FAST, "tracking.enabled=false", f"output_root={tmp_path / 'out'}", *extra]


def _log_file(tmp_path) -> str:
    (log,) = (tmp_path / "out").glob("*/*/__main__.log")
    return log.read_text()


def test_terminal_shows_one_live_line_with_eta_and_no_raw_dict(tiny_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    child = pexpect.spawn(sys.executable, ["-m", "ftrun", *_args(tmp_path)], env=env, cwd=str(tmp_path),
                          dimensions=(40, 200), timeout=240, encoding="utf-8", codec_errors="replace")
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before
    shown = ANSI.sub("", raw)
    assert child.exitstatus == 0, shown[-3000:]
    assert re.search(r"step\s+[1-6]/6 .*ETA", shown), shown[-3000:]  # the live line: step/total ... ETA
    assert "\x1b[2K" in raw  # redrawn in place, not scrolled
    assert "{'" not in shown  # no PrinterCallback / ProgressCallback dicts
    assert "eval at step 3/6: eval_loss" in shown  # one line per evaluation
    assert "Trained 'lora-" in shown and "eval_loss" in shown.split("Trained 'lora-")[1]  # the summary block
    # the file gets every logging step's line, with the values the terminal showed in place
    steps = re.findall(r"step (\d)/6 \(\d+%\) · epoch [\d.]+ · loss [\d.]+ · lr", _log_file(tmp_path))
    assert steps == ["2", "4", "6"]


def test_a_file_gets_plain_timestamped_lines(tiny_dir, tmp_path):
    out = tmp_path / "run.txt"
    with open(out, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "ftrun", *_args(tmp_path, "train.progress_interval_s=0")],
                            stdout=f, stderr=subprocess.STDOUT, cwd=str(tmp_path), timeout=240).returncode
    text = out.read_text()
    assert rc == 0, text[-3000:]
    assert "\r" not in text and "\x1b[" not in text  # no animation
    assert "{'" not in text
    progress = [line for line in text.splitlines() if "][ftrun.progress][" in line]
    assert all(TIMESTAMPED.match(line) for line in progress), progress
    steps = [re.search(r" - step (\d)/6 .*ETA \d+:\d\d:\d\d", line) for line in progress if " - step " in line]
    assert [m.group(1) for m in steps if m] == ["2", "4", "6"]  # interval 0: every logging step


def test_without_a_terminal_a_line_per_interval_not_per_step():
    """Logging steps closer together than the interval reach the console once, and the last step always;
    the log file (records marked file_only too) gets them all."""
    from types import SimpleNamespace

    from ftrun.progress import RunProgress

    progress = RunProgress("run", interval_s=3600, mode="lines")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=6, epoch=0.0,
                            num_input_tokens_seen=0)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ftrun.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        progress.on_train_begin(None, state, None)
        for step in (2, 4, 6):
            state.global_step, state.epoch = step, step / 100
            progress.on_log(None, state, None, logs={"loss": 3.0, "learning_rate": 1e-3, "grad_norm": 1.0})
    finally:
        logger.removeHandler(handler)
        logger.level = level
    lines = [(r.getMessage(), getattr(r, "file_only", False)) for r in records]
    assert [m.split(" (")[0] for m, _ in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert [file_only for _, file_only in lines] == [True, True, False]
    assert "grad_norm=1" in lines[0][0] and "ETA 0:00:00" in lines[-1][0]


def test_quiet_and_verbose_are_hydra_overrides(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    assert verbosity_arguments(["--quiet", "lr=1e-4"]) == ["lr=1e-4", *QUIET_OVERRIDES]
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "debug")  # the caller's own setting wins
    assert verbosity_arguments(["-v"]) == [*VERBOSE_OVERRIDES]
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "debug"


def test_quiet_run_shows_warnings_only(tmp_path):
    """Hydra takes the overrides ``--quiet`` stands for: a refused run still says why, and nothing else."""
    r = subprocess.run([sys.executable, "-m", "ftrun", "--quiet", "lr=-1", f"output_root={tmp_path}"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "[INFO]" not in r.stdout + r.stderr
    assert "lr=-1: lr must be > 0" in r.stdout + r.stderr
