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
