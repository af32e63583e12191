"""A run killed with SIGKILL and started again with resume=auto finishes the same number of
optimizer steps as an uninterrupted run, in the same directory and the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftrun.config import last_checkpoint
from ftrun.contract import RESOLVED_CONFIG

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


# ---------------------------------------------------------------------------
# the wrong checkpoint is refused


def _checkpointed_run(tmp_path, overrides):
    """A run directory as a killed run leaves it: its resolved config and one complete checkpoint."""
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from ftrun.config import to_container

    run_dir = tmp_path / "outputs" / "mine" / "2026-01-01_00-00-00"
    (run_dir / "checkpoint-5").mkdir(parents=True)
    (run_dir / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(to_container(compose_cfg(["name=mine", *overrides]))))
    return run_dir


@pytest.mark.parametrize(("changed", "named"), [
    (["lr=1e-2"], "lr: the checkpoint's run had 0.001, this run has 0.01"),
    (["rank=8"], "rank: the checkpoint's run had 16, this run has 8"),
    (["method=full"], "method.name: the checkpoint's run had lora, this run has full"),
    (["data.num_train=100"], "data.num_train: the checkpoint's run had 2000, this run has 100"),
])
def test_resume_refuses_a_checkpoint_trained_with_other_settings(tmp_path, changed, named):
    from conftest import compose_cfg
    from ftrun.config import ConfigError
    from ftrun.train import check_resume

    run_dir = _checkpointed_run(tmp_path, [])
    with pytest.raises(ConfigError) as err:
        check_resume(compose_cfg(["name=mine", "resume=auto", *changed]), run_dir)
    assert named in str(err.value) and "resume=force" in str(err.value)
    check_resume(compose_cfg(["name=mine", "resume=force", *changed]), run_dir)  # force resumes it anyway


def test_resume_accepts_changes_that_do_not_change_training(tmp_path):
    from conftest import compose_cfg
    from ftrun.train import check_resume

    run_dir = _checkpointed_run(tmp_path, [])
    check_resume(compose_cfg(["name=mine", "resume=auto", "train.logging_steps=1", "tracking.enabled=false",
                              "train.eval_batch_size=4", f"output_root={tmp_path}"]), run_dir)


def test_cli_refuses_the_wrong_checkpoint_before_anything_loads(tmp_path):
    run_dir = _checkpointed_run(tmp_path, [])
    out = subprocess.run([sys.executable, "-m", "ftrun", "name=mine", "resume=auto", "lr=1e-2", "rank=8",
                          f"output_root={tmp_path / 'outputs'}", "tracking.enabled=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and "Loading tokenizer" not in text
    assert f"resume=auto: {run_dir / 'checkpoint-5'} was trained with other settings" in text
    assert "lr: the checkpoint's run had 0.001, this run has 0.01" in text
    assert "rank: the checkpoint's run had 16, this run has 8" in text


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

    from ftrun.fit import _disk_full

    assert _disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    wrapped = RuntimeError("PytorchStreamWriter failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert _disk_full(wrapped, tmp_path)
    zip_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 632704 vs 632596")
    assert not _disk_full(zip_error, tmp_path)  # plenty of space here: some other failure, re-raised as is
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, (10 << 20) - 4096, 4096))
    assert _disk_full(zip_error, tmp_path)  # torch.save's only words for a disk that filled under it


def test_resume_from_the_last_steps_checkpoint_trains_no_further(tiny_dir, tmp_path):
    """Killed after its final checkpoint but before its result: resume=auto takes that checkpoint's weights
    and evaluates them, ending at max_steps with the uninterrupted run's eval loss (not one step past it)."""
    import json
    import shutil

    from conftest import compose_cfg
    from ftrun.train import run

    args = ["name=last", f"output_root={tmp_path}", "data.num_train=64", "data.num_eval=16", "max_steps=6",
            "batch_size=8", "train.save_steps=3", "train.eval_steps=3", "tracking.enabled=false"]
    first = run(compose_cfg(args), tmp_path / "last" / "2026-01-01_00-00-00")
    run_dir = tmp_path / "last" / "2026-01-01_00-00-00"
    (run_dir / "result.json").unlink()  # as a SIGKILL after the last checkpoint leaves it
    shutil.rmtree(run_dir / "model")
    again = run(compose_cfg([*args, "resume=auto"]), run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 6  # transformers alone resumes mid-epoch to step 7
    assert again == pytest.approx(first, abs=1e-6)
    assert (run_dir / "model" / "adapter_config.json").is_file()
