"""A run killed with SIGKILL and started again with resume=auto finishes the same number of
optimizer steps as an uninterrupted run, in the same directory and the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ftrun.config import last_checkpoint

ARGS = [
    "data.num_train=320", "data.num_eval=16", "epochs=1", "batch_size=8",  # 40 optimizer steps
    "train.save_steps=5", "train.eval_steps=0", "train.logging_steps=5",
]


def test_resume_after_sigkill(tiny_dir, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "ftrun", *ARGS, f"output_root={tmp_path / 'outputs'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir, deadline = None, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        runs = list((tmp_path / "outputs").glob("*/*"))
        if runs and last_checkpoint(runs[0]) is not None:
            run_dir = runs[0]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert run_dir is not None, "the run ended before it wrote a checkpoint"
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "result.json").exists(), "the first attempt should not have finished"
    killed_at = int(last_checkpoint(run_dir).name.split("-")[1])
    assert killed_at < 40

    out = subprocess.run([*cmd, "resume=auto"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resuming from {run_dir}" in out.stderr + out.stdout
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 40  # 320 samples / batch 8, as without the kill
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1, "resume must reuse the run directory"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ftrun").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text()
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert max(steps) == 40 and any(s > killed_at for s in steps)


def test_resume_auto_takes_back_a_run_killed_before_its_first_checkpoint(tmp_path):
    """Killed during data prep or its first steps, a run leaves a directory (and maybe an MLflow run)
    but no checkpoint; resume=auto starts it again there instead of leaving an orphan beside a new one."""
    from ftrun.config import find_resumable_run

    name = tmp_path / "lora-letters"
    finished = name / "2026-01-01_00-00-00"
    (finished / "checkpoint-4").mkdir(parents=True)
    (finished / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (finished / "result.json").write_text("{}")
    assert find_resumable_run(name) == finished
    killed = name / "2026-01-02_00-00-00"
    killed.mkdir()
    (killed / "mlflow_run_id").write_text("abc")
    assert find_resumable_run(name) == killed  # newest, unfinished, no checkpoint: the same directory
    (killed / "result.json").write_text("{}")  # a run that finished without checkpoints is not taken back
    assert find_resumable_run(name) == finished


def test_a_write_that_fails_on_a_full_disk_is_recognised(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    from ftrun.train import _disk_full

    assert _disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    wrapped = RuntimeError("PytorchStreamWriter failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert _disk_full(wrapped, tmp_path)
    zip_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 632704 vs 632596")
    assert not _disk_full(zip_error, tmp_path)  # plenty of space here: some other failure, re-raised as is
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, (10 << 20) - 4096, 4096))
    assert _disk_full(zip_error, tmp_path)  # torch.save's only words for a disk that filled under it
