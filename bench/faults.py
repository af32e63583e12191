"""Fault injection with counted results: kill, interrupt, fill the disk, feed bad input.

    python bench/faults.py                       # the full suite (about 10 minutes on 2 CPU cores)
    python bench/faults.py --runs 4 --sweeps 2 --malformed 10   # a quick pass

Each section tries a fault many times and counts what survived:

- run kills: a tiny ``python -m ftrun`` run is killed with SIGKILL at a moment of one of four kinds
  (data prep / training / checkpoint write / final eval: each waited for as an event, then a random
  delay), then rerun with ``resume=auto``. Survived = it reaches the same final step, in the same
  run directory and the same MLflow run (one run in the store), and the checkpoint it resumed from
  loads. The final eval_loss is compared with an uninterrupted run's.
- sweep kills: ``python -m ftrun -m`` (the sweeper, with tests/sweeper/fake_trial.py as the trial
  command so that the sweeper's bookkeeping is what is tested) is killed at a random moment and rerun.
  Survived = exactly n_trials COMPLETE, no two COMPLETE trials for the same trial directory.
- interrupted writes: every killed run above is checked for a checkpoint that a reader would take
  (``last_checkpoint``) but cannot load; ``python -m ftrun.export`` is killed mid-write and its
  destination checked (absent, or complete and loadable).
- disk full: the run's output on a small tmpfs that holds one checkpoint but not two. Survived = one
  clear error line (no traceback) and the previous checkpoint loads.
- malformed inputs: config values, data files and dataset_info.json entries. Survived = the run stops
  with one clear message before a model loads (in process: a ConfigError or Hydra's override error;
  five of them also through the CLI, where it must print no traceback).

Writes bench/results/faults.json and bench/results/faults.md (the table, with the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN_ARGS = ["data.num_train=64", "data.num_eval=16", "max_steps=12", "batch_size=8", "train.save_steps=3",
            "train.eval_steps=6", "train.logging_steps=3"]
MAX_STEPS = 12
PHASES = ("data prep", "training", "checkpoint write", "final eval")
DEADLINE_S = 300


def ftrun(args: List[str], cwd: Path, env: Dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ftrun", *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for(proc: subprocess.Popen, cond: Callable[[], bool], poll_s: float = 0.005) -> bool:
    """Poll ``cond`` until it holds (True) or the process ends / the deadline passes (False)."""
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll_s)
    return False


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; True if the process was still running (the fault really hit it)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    return alive


def checkpoint_loads(ckpt: Path) -> Optional[str]:
    """None if the checkpoint a reader would take loads, else why not."""
    from safetensors.torch import load_file

    try:
        json.loads((ckpt / "trainer_state.json").read_text())
        weights = list(ckpt.glob("*.safetensors"))
        if not weights:
            return "no weights"
        for w in weights:
            load_file(str(w))
        import torch

        for name in ("optimizer.pt", "scheduler.pt"):
            if (ckpt / name).exists():
                torch.load(ckpt / name, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to read is what we count
        return f"{type(e).__name__}: {e}"[:200]
    return None


def run_dirs(root: Path) -> List[Path]:
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir())


def mlflow_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ftrun")
    return client.search_runs([exp.experiment_id]) if exp else []


# ---------------------------------------------------------------------------
# 1. runs killed at random moments, resumed


def reference_run(work: Path) -> dict:
    d = work / "reference"
    d.mkdir()
    uri = f"sqlite:///{d / 'mlflow.db'}"
    start = time.time()
    p = ftrun([*RUN_ARGS, f"output_root={d / 'outputs'}"], d, {"MLFLOW_TRACKING_URI": uri})
    out, _ = p.communicate(timeout=DEADLINE_S)
    if p.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{out[-3000:]}")
    (run_dir,) = run_dirs(d)
    result = json.loads((run_dir / "result.json").read_text())
    return {"eval_loss": result["eval_loss"], "global_step": result["global_step"], "wall_s": time.time() - start}


def kill_one_run(work: Path, i: int, *, phase: str, rng: random.Random, ref: dict) -> dict:
    from ftrun.config import last_checkpoint

    d = work / f"run{i:02d}"
    d.mkdir()
    uri = f"sqlite:///{d / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    args = [*RUN_ARGS, f"output_root={d / 'outputs'}"]
    p = ftrun(args, d, env)

    def ckpts():
        return [c for r in run_dirs(d) for c in r.glob("checkpoint-*")]

    if phase == "data prep":  # the run has started (its directory exists): a random moment of the next second
        wait_for(p, lambda: any((r / "config_resolved.yaml").exists() for r in run_dirs(d)))
        time.sleep(rng.uniform(0.0, 1.0))
    elif phase == "training":  # after the first complete checkpoint, a random moment before the next
        wait_for(p, lambda: any(last_checkpoint(r) for r in run_dirs(d)))
        time.sleep(rng.uniform(0.0, 1.0))
    elif phase == "checkpoint write":  # a checkpoint directory exists but its trainer_state.json does not yet
        target = rng.choice([3, 6, 9])
        wait_for(p, lambda: any(c.name == f"checkpoint-{target}" and not (c / "trainer_state.json").exists()
                                for c in ckpts()), poll_s=0.001)
        time.sleep(rng.uniform(0.0, 0.02))
    else:  # final eval: the last step's checkpoint is complete and the result not written yet
        wait_for(p, lambda: any((r / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").exists() for r in run_dirs(d)))
        time.sleep(rng.uniform(0.0, 0.3))
    hit = kill(p)
    dirs = run_dirs(d)
    before_id = (dirs[0] / "mlflow_run_id").read_text().strip() if dirs and (dirs[0] / "mlflow_run_id").exists() else None
    taken = last_checkpoint(dirs[0]) if dirs else None
    corrupt = checkpoint_loads(taken) if taken else None
    finished_before = bool(dirs) and (dirs[0] / "result.json").exists()

    p2 = ftrun([*args, "resume=auto"], d, env)
    out, _ = p2.communicate(timeout=DEADLINE_S)
    dirs2 = run_dirs(d)
    row = {"try": i, "phase": phase, "killed_running": hit, "finished_before_kill": finished_before,
           "resumed_from": str(taken.name) if taken else None, "corrupt_checkpoint": corrupt, "rc": p2.returncode}
    problems = []
    if p2.returncode != 0:
        problems.append(f"rerun exit {p2.returncode}: {out.strip().splitlines()[-1:]}")
    if corrupt:
        problems.append(f"checkpoint a reader would take does not load: {corrupt}")
    if len(dirs2) != 1:
        problems.append(f"{len(dirs2)} run directories")
    else:
        result_path = dirs2[0] / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        row["global_step"] = result.get("global_step")
        row["eval_loss"] = result.get("eval_loss")
        if result.get("global_step") != ref["global_step"]:
            problems.append(f"final step {result.get('global_step')} != {ref['global_step']}")
        if row["eval_loss"] is not None:
            row["eval_loss_diff"] = abs(row["eval_loss"] - ref["eval_loss"])
        runs = mlflow_runs(uri)
        after_id = (dirs2[0] / "mlflow_run_id").read_text().strip()
        if len(runs) != 1 or runs[0].info.status != "FINISHED":
            problems.append(f"{len(runs)} MLflow runs ({[r.info.status for r in runs]})")
        if before_id is not None and before_id != after_id:
            problems.append("a new MLflow run instead of the killed one")
    row["problems"] = problems
    row["survived"] = not problems
    return row


# ---------------------------------------------------------------------------
# 2. sweeps killed at random moments, rerun


def kill_one_sweep(work: Path, i: int, rng: random.Random) -> dict:
    import optuna

    d = work / f"sweep{i:02d}"
    d.mkdir()
    fake = ROOT / "tests" / "sweeper" / "fake_trial.py"
    n_trials = 4
    args = ["-m", "lr=tag(log,interval(1e-5,1e-1))", "tracking.enabled=false", f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.n_jobs=2", "hydra.sweeper.heartbeat_s=0.5", f"hydra.sweep.dir={d}",
            f"hydra.sweeper.command=[{sys.executable},{fake}]"]
    env = {"FAKE_SLEEP": "1.5", "FAKE_CHECKPOINT": "1"}
    p = ftrun(args, ROOT, env)
    # a random moment after the study exists (the sweeper is up), while trials run
    wait_for(p, lambda: any(d.glob("*/study.db")), poll_s=0.01)
    time.sleep(rng.uniform(0.0, 4.0))
    hit = kill(p)
    p2 = ftrun(args, ROOT, env)
    out, _ = p2.communicate(timeout=DEADLINE_S)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (db,) = d.glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    dirs = [t.user_attrs.get("trial_dir") for t in complete]
    dup = len(dirs) - len(set(dirs))
    row = {"try": i, "killed_running": hit, "rc": p2.returncode, "n_trials": n_trials, "complete": len(complete),
           "duplicated": dup, "states": [t.state.name for t in study.trials]}
    problems = []
    if p2.returncode != 0:
        problems.append(f"rerun exit {p2.returncode}: {out.strip().splitlines()[-1:]}")
    if len(complete) < n_trials:
        problems.append(f"lost: {len(complete)} of {n_trials} complete")
    if len(complete) > n_trials or dup:
        problems.append(f"duplicated: {len(complete)} complete, {dup} trial dirs twice")
    row["problems"], row["survived"] = problems, not problems
    return row


# ---------------------------------------------------------------------------
# 3. export killed mid-write


def kill_exports(work: Path, tries: int, rng: random.Random) -> List[dict]:
    d = work / "export_src"
    d.mkdir()
    p = ftrun([*RUN_ARGS, "max_steps=2", "train.save_steps=0", "tracking.enabled=false",
               f"hydra.run.dir={d / 'run'}"], d, {})
    out, _ = p.communicate(timeout=DEADLINE_S)
    if p.returncode != 0:
        return [{"try": 0, "survived": False, "problems": [f"source run failed: {out[-500:]}"]}]
    rows = []
    for i in range(tries):
        dest = work / f"export{i}"
        proc = subprocess.Popen([sys.executable, "-m", "ftrun.export", str(d / "run"), f"export.dir={dest}"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # kill while files are being written into the temporary directory beside the destination
        wait_for(proc, lambda: any(work.glob(f".{dest.name}.partial-*/*")), poll_s=0.002)
        time.sleep(rng.uniform(0.0, 0.2))
        hit = kill(proc)
        problems = []
        if dest.exists():
            try:
                from transformers import AutoModelForCausalLM

                AutoModelForCausalLM.from_pretrained(str(dest))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{dest.name} exists but does not load: {type(e).__name__}")
        rows.append({"try": i, "killed_running": hit, "dest_exists": dest.exists(), "problems": problems,
                     "survived": not problems})
    return rows


# ---------------------------------------------------------------------------
# 4. disk full during a checkpoint


def disk_full(work: Path) -> dict:
    from ftrun.config import last_checkpoint

    mnt = work / "tmpfs"
    mnt.mkdir()
    probe = work / "probe"
    probe.mkdir()
    # how big is one checkpoint? a run with one save tells us
    p = ftrun([*RUN_ARGS, "max_steps=3", "tracking.enabled=false", f"output_root={probe / 'outputs'}"], probe, {})
    p.communicate(timeout=DEADLINE_S)
    ck = next(probe.glob("outputs/*/*/checkpoint-3"), None)
    if ck is None:
        return {"survived": False, "problems": ["probe run wrote no checkpoint"]}
    size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
    limit = int(size * 1.6) + (256 << 10)  # one checkpoint and the run's small files fit, two do not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"survived": None, "problems": [f"not run: cannot mount a tmpfs ({mounted.stderr.strip()})"]}
    try:
        p = ftrun([*RUN_ARGS, "tracking.enabled=false", "train.save_total_limit=null", f"output_root={mnt}"], work, {})
        try:
            out, _ = p.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += f"\n(no end after {DEADLINE_S} s: killed)"
        dirs = sorted(x for x in mnt.glob("*/*") if x.is_dir())
        kept = last_checkpoint(dirs[0]) if dirs else None
        errors = [line for line in out.splitlines() if "[ERROR]" in line]
        problems = []
        if p.returncode == 0:
            problems.append("the run finished: the disk never filled (checkpoint smaller than measured?)")
        if "Traceback" in out:
            problems.append("a traceback: " + out.strip().splitlines()[-1][:200])
        if len(errors) != 1 or "disk full" not in errors[0]:
            problems.append(f"not one clear error line: {errors[:2]}")
        if kept is None:
            problems.append("no complete checkpoint left")
        elif checkpoint_loads(kept):
            problems.append(f"the previous checkpoint does not load: {checkpoint_loads(kept)}")
        return {"tmpfs_bytes": limit, "checkpoint_bytes": size, "rc": p.returncode,
                "output_tail": out.strip().splitlines()[-12:] if problems else None,
                "error": errors[0][-300:] if errors else None, "kept": kept.name if kept else None,
                "problems": problems, "survived": not problems}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------
# 5. malformed inputs


def malformed_cases(tmp: Path) -> List[dict]:
    """(what, overrides) pairs: config values, data files, registry entries."""
    def f(name, text):
        p = tmp / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    good = '{"instruction": "q", "output": "a"}\n'
    files = {
        "data file empty": f("empty.jsonl", ""),
        "data not json": f("garbage.jsonl", "not json at all{"),
        "data json truncated": f("trunc.json", '[{"instruction": "q", "out'),
        "data wrong columns": f("cols.jsonl", '{"q": 1, "a": 2}\n'),
        "data output not text": f("types.jsonl", '{"instruction": "q", "output": [1]}\n'),
        "data all empty outputs": f("emptyout.jsonl", '{"instruction": "q", "output": ""}\n'),
        "data binary": f("bin.jsonl", bytes(range(256))),
        "csv garbage": f("bad.csv", "a,b\n1,2,3,4\n"),
        "parquet garbage": f("bad.parquet", b"PAR1 not really"),
    }
    empty_dir = tmp / "emptydir"
    empty_dir.mkdir()
    cases = [
        ("lr negative", ["lr=-1"]), ("lr zero", ["lr=0"]), ("lr text", ["lr=fast"]), ("rank 0", ["rank=0"]),
        ("rank text", ["rank=big"]), ("batch_size 0", ["batch_size=0"]), ("grad_accum 0", ["grad_accum=0"]),
        ("epochs negative", ["epochs=-1"]), ("cutoff_len 0", ["cutoff_len=0"]), ("cutoff_len tiny", ["cutoff_len=10"]),
        ("precision unknown", ["precision=fp8"]), ("objective unknown", ["objective=bleu4"]),
        ("optimizer.name unknown", ["optimizer.name=lion"]), ("scheduler.name unknown", ["scheduler.name=step"]),
        ("betas out of range", ["optimizer.betas=[0.9,1.5]"]), ("weight_decay negative", ["optimizer.weight_decay=-1"]),
        ("max_grad_norm negative", ["optimizer.max_grad_norm=-1"]), ("eps 0", ["optimizer.eps=0"]),
        ("method unknown group", ["method=prefix"]), ("model unknown group", ["model=gpt5"]),
        ("unknown key", ["learning_rate=1e-3"]), ("resume bad", ["resume=sometimes"]),
        ("model.path missing", ["model=qwen2.5-0.5b-instruct", "model.path=/no/such/model"]),
        ("data.format unknown", ["data.format=yaml"]), ("mix unknown", ["data.mix=zip"]),
        ("mix_probs wrong length", ["data.names=[a,b]", "data.mix=interleave", "data.mix_probs=[0.2]"]),
        ("plateau without eval", ["scheduler=reduce_lr_on_plateau", "train.eval_steps=0"]),
        ("fp16 on cpu", ["precision=fp16"]),
        ("data file missing", ["data=alpaca", "data.path=/no/such.jsonl"]),
        *[(what, ["data=alpaca", f"data.path={path}"]) for what, path in files.items()],
        ("data strict bad line", ["data=alpaca", "data.strict=true", f"data.path={f('strict.jsonl', good + '{oops' + chr(10))}"]),
        ("sharegpt wrong shape", ["data=sharegpt", f"data.path={f('sg.jsonl', json.dumps({'conversations': 'hi'}) + chr(10))}"]),
        ("sharegpt no assistant", ["data=sharegpt", "data.path=" + str(f("sg2.jsonl", json.dumps(
            {"conversations": [{"from": "human", "value": "hi"}]}) + chr(10)))]),
        ("empty folder", ["data=alpaca", f"data.path={empty_dir}"]),
        ("sft data for dpo", ["stage=dpo", "data=alpaca", f"data.path={f('nopairs.jsonl', good)}"]),
    ]
    reg_entries = {
        "missing file": {"x": {"file_name": "nope.json"}},
        "hub dataset": {"x": {"hf_hub_url": "tatsu-lab/alpaca"}},
        "images": {"x": {"file_name": "ok.jsonl", "formatting": "sharegpt", "columns": {"messages": "m", "images": "i"}}},
        "unknown formatting": {"x": {"file_name": "ok.jsonl", "formatting": "xml"}},
        "entry not an object": {"x": "ok.jsonl"},
    }
    f("ok.jsonl", good * 4)
    for what, info in reg_entries.items():
        reg = f(f"reg_{len(cases)}.json", json.dumps(info))
        cases.append((f"registry: {what}", ["data=llamafactory", f"data.registry={reg}", "data.names=[x]"]))
    cases.append(("registry: not json", ["data=llamafactory", f"data.registry={f('reg_bad.json', '{nope')}", "data.names=[x]"]))
    cases.append(("registry: unknown name", ["data=llamafactory", f"data.registry={f('reg_ok.json', json.dumps({'a': {'file_name': 'ok.jsonl'}}))}",
                                              "data.names=[b]"]))
    return [{"what": w, "overrides": o} for w, o in cases]


def malformed(work: Path, n: int, cli_sample: int = 5) -> List[dict]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import ftrun.model
    from ftrun.compose import compose
    from ftrun.config import ConfigError
    from ftrun.train import run

    tmp = work / "malformed"
    tmp.mkdir()
    cases = malformed_cases(tmp)[:n]

    class ModelLoaded(Exception):
        pass

    def no_model(*a, **k):
        raise ModelLoaded("a model loaded before the mistake was reported")

    ftrun.model.load_model = no_model
    rows = []
    for i, case in enumerate(cases):
        row = {"what": case["what"], "overrides": case["overrides"]}
        try:
            cfg = compose([*case["overrides"], "tracking.enabled=false", f"output_root={tmp / 'out'}",
                           "data.num_train=16"])
            run(cfg, tmp / f"run{i}")
            row["outcome"], row["survived"] = "no error: the run went on", False
        except ConfigError as e:
            row["outcome"], row["survived"] = f"ConfigError: {e}", True
        except (HydraException, OmegaConfBaseException) as e:  # Hydra prints these as one message, no traceback
            row["outcome"], row["survived"] = f"{type(e).__name__}: {str(e).splitlines()[0]}", True
        except ModelLoaded as e:
            row["outcome"], row["survived"] = str(e), False
        except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
            row["outcome"], row["survived"] = f"traceback: {type(e).__name__}: {e}"[:300], False
        rows.append(row)
    # the same path end to end for a few: one message, status 1 or 2, no traceback
    for row in rows[:: max(1, len(rows) // cli_sample)][:cli_sample]:
        out = subprocess.run([sys.executable, "-m", "ftrun", *row["overrides"], "tracking.enabled=false",
                              "data.num_train=16", f"hydra.run.dir={tmp / 'cli'}"], cwd=tmp,
                             capture_output=True, text=True, timeout=DEADLINE_S)
        text = out.stdout + out.stderr
        row["cli_rc"] = out.returncode
        row["cli_traceback"] = "Traceback" in text
        if out.returncode == 0 or row["cli_traceback"]:
            row["survived"] = False
            row["outcome"] += f" | CLI: rc {out.returncode}, traceback {row['cli_traceback']}"
    return rows


# ---------------------------------------------------------------------------


def machine() -> str:
    import torch

    from ftrun.estimate.baseline import cpu_model

    cpu = cpu_model()

    return (f"{platform.node()}: {cpu or platform.processor()}, {os.cpu_count()} CPU cores (shared), "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def guarded(fn, *args, **kw) -> dict:
    """One try; an exception in the harness or a hung process counts as lost, with the reason."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001
        return {"survived": False, "problems": [f"{type(e).__name__}: {e}"[:300]], "phase": kw.get("phase", "")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--sweeps", type=int, default=10)
    ap.add_argument("--exports", type=int, default=3)
    ap.add_argument("--malformed", type=int, default=50)
    ap.add_argument("--disk", type=int, default=1, help="1: the disk-full section (needs root to mount a tmpfs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--note", default="", help="a line for the report (e.g. why the counts were reduced)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="ftrun-faults-"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    sections: Dict[str, List[dict]] = {}
    try:
        ref = reference_run(work) if a.runs else None
        if ref:
            print(f"reference run: step {ref['global_step']}, eval_loss {ref['eval_loss']:.4f}, {ref['wall_s']:.0f} s",
                  flush=True)
        rows = []
        for i in range(a.runs):
            rows.append(guarded(kill_one_run, work, i, phase=PHASES[i % len(PHASES)], rng=rng, ref=ref))
            rows[-1].setdefault("try", i)
            rows[-1].setdefault("corrupt_checkpoint", None)
            rows[-1].setdefault("resumed_from", None)
            print(f"run kill {i} ({rows[-1]['phase']}): {'ok' if rows[-1]['survived'] else rows[-1]['problems']}",
                  flush=True)
        if a.runs:
            sections["run killed (SIGKILL) + resume=auto"] = rows
        rows = []
        for i in range(a.sweeps):
            rows.append(guarded(kill_one_sweep, work, i, rng))
            print(f"sweep kill {i}: {'ok' if rows[-1]['survived'] else rows[-1]['problems']}", flush=True)
        if a.sweeps:
            sections["sweep killed (SIGKILL) + rerun"] = rows
        if a.runs:
            sections["checkpoint write interrupted (from the run kills)"] = [
                {"try": r["try"], "survived": not r["corrupt_checkpoint"], "problems": [r["corrupt_checkpoint"]] if
                 r["corrupt_checkpoint"] else []} for r in sections["run killed (SIGKILL) + resume=auto"]]
        if a.exports:
            exports = guarded(kill_exports, work, a.exports, rng)
            sections["export write interrupted (SIGKILL)"] = exports if isinstance(exports, list) else [exports]
            print("exports:", [r["survived"] for r in sections["export write interrupted (SIGKILL)"]], flush=True)
        if a.disk:
            sections["disk full during a checkpoint (tmpfs)"] = [guarded(disk_full, work)]
            print("disk full:", sections["disk full during a checkpoint (tmpfs)"][0], flush=True)
        sections["malformed input"] = malformed(work, a.malformed)
        print("malformed:", sum(r["survived"] for r in sections["malformed input"]), "of",
              len(sections["malformed input"]), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("work directory:", work)
    diffs = [r["eval_loss_diff"] for r in sections.get("run killed (SIGKILL) + resume=auto", []) if "eval_loss_diff" in r]
    summary = []
    for name, rows in sections.items():
        ran = [r for r in rows if r.get("survived") is not None]
        summary.append({"fault": name, "tried": len(ran), "survived": sum(bool(r["survived"]) for r in ran),
                        "lost": sum(not r["survived"] for r in ran)})
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_s": round(time.time() - started), "seed": a.seed, "reference": ref, "summary": summary,
              "eval_loss_abs_diff_vs_uninterrupted": {"max": max(diffs) if diffs else None,
                                                       "mean": sum(diffs) / len(diffs) if diffs else None},
              "sections": sections}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "faults.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# Fault injection: `python bench/faults.py`", "",
             f"Machine: {report['machine']}. {report['date']}, {report['wall_s']} s, seed {a.seed}.",
             *([f"", a.note] if a.note else []), "",
             "| fault | tried | survived | lost |", "|---|---|---|---|"]
    lines += [f"| {s['fault']} | {s['tried']} | {s['survived']} | {s['lost']} |" for s in summary]
    if diffs and ref:
        lines += ["", f"Resumed runs' final eval_loss vs an uninterrupted run ({ref['eval_loss']:.4f}): "
                      f"max |diff| {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}."]
    phases = {}
    for r in sections.get("run killed (SIGKILL) + resume=auto", []):
        phases.setdefault(r["phase"], []).append(r)
    if phases:
        lines += ["", "Run kills by moment: " + ", ".join(
            f"{p} {sum(r['survived'] for r in rs)}/{len(rs)} (resumed from a checkpoint: "
            f"{sum(bool(r['resumed_from']) for r in rs)})" for p, rs in phases.items()) + "."]
    lost = [(name, r) for name, rows in sections.items() for r in rows if r.get("survived") is False]
    if lost:
        lines += ["", "## Lost", ""] + [f"- {name}: {r.get('what') or r.get('try')}: "
                                         f"{r.get('problems') or r.get('outcome')}" for name, r in lost]
    lines += ["", "Details per try: faults.json."]
    (a.out / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
