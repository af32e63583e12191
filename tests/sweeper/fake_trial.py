"""A stand-in for ``python -m ftrun`` in sweeper tests: same arguments, no training.

Reads ``key=value`` overrides, sleeps, and writes ``result.json`` into
``hydra.run.dir`` the way :func:`ftrun.train.run` does. Behaviour comes from the
sampled values and the environment:

- objective ``eval_loss = (log10(lr) + 3)^2 + 0.01 * rank``: best near lr=1e-3
- ``batch_size=0``: exits 2 with ftrun's ConfigError message
- ``batch_size > FAKE_OOM_ABOVE``: exits 1 with a CUDA out-of-memory traceback
- ``FAKE_MLFLOW=1``: the trial starts its own MLflow run (child of the sweep's) and writes mlflow_run_id
- ``FAKE_SLEEP`` seconds (``epochs`` multiplies it) before finishing; with
  ``FAKE_CHECKPOINT=1`` a checkpoint is written halfway and ``resume=auto`` resumes from it
- records its environment (devices, threads), pid and start/end times; writes ``fake_started``
  into the run dir as soon as it runs
"""

import json
import math
import os
import sys
import time
from pathlib import Path

start = time.time()
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
run_dir = Path(args["hydra.run.dir"])
run_dir.mkdir(parents=True, exist_ok=True)
lr = float(args.get("lr", 1e-3))
rank = int(args.get("rank", 16))
batch = int(args.get("batch_size", 8))
epochs = float(args.get("epochs", 1))

mlflow_run = None
if os.environ.get("FAKE_MLFLOW"):  # start this trial's own MLflow run, as ftrun's tracker does
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("ftrun")
    exp_id = exp.experiment_id if exp else client.create_experiment("ftrun")
    parent = os.environ.get("FTRUN_MLFLOW_PARENT_RUN_ID")
    mlflow_run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent} if parent else {}).info.run_id
    (run_dir / "mlflow_run_id").write_text(mlflow_run)

if batch == 0:
    print("[2026-01-01 00:00:00,000][ftrun][ERROR] - invalid configuration:\n  batch_size=0: batch_size must be >= 1")
    sys.exit(2)
if batch > int(os.environ.get("FAKE_OOM_ABOVE", "1000000")):
    print("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
          "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    sys.exit(1)

(run_dir / "fake_started").write_text(str(os.getpid()))  # an event tests can wait for instead of sleeping
sleep = float(os.environ.get("FAKE_SLEEP", "0")) * epochs
resumed = None
ckpt = run_dir / "checkpoint-5"
if args.get("resume") == "auto" and (ckpt / "trainer_state.json").is_file():
    resumed = str(ckpt)
    time.sleep(sleep / 2)
else:
    time.sleep(sleep / 2)
    if os.environ.get("FAKE_CHECKPOINT"):
        ckpt.mkdir(exist_ok=True)
        (ckpt / "trainer_state.json").write_text("{}")
    time.sleep(sleep / 2)

loss = (math.log10(lr) + 3) ** 2 + 0.01 * rank
result = {
    "objective": loss, "eval_loss": loss, "peak_memory_mb": 100.0 * batch, "train_time_s": sleep,
    "pruned": False, "resumed_from": resumed, "pid": os.getpid(), "start": start, "end": time.time(),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
    "batch_size": batch, "grad_accum": int(args.get("grad_accum", 1)),
    "trial": os.environ.get("FTRUN_OPTUNA_TRIAL"), "parent": os.environ.get("FTRUN_MLFLOW_PARENT_RUN_ID"),
}
if mlflow_run:
    client.set_terminated(mlflow_run)
tmp = run_dir / "result.json.tmp"
tmp.write_text(json.dumps(result))
tmp.replace(run_dir / "result.json")
