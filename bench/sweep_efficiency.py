"""How much compute a sweep needs to find what the exhaustive grid finds, on two tasks.

    python bench/sweep_efficiency.py                         # both tasks, grid + TPE, random, one-epoch, 3 seeds
    python bench/sweep_efficiency.py --task instruct         # one task
    python bench/sweep_efficiency.py --configs auto --seeds 0 --smoke   # sweep=auto as shipped, at small size
    python bench/sweep_efficiency.py --out-dir DIR           # continue an interrupted run (finished sweeps are read back)
    python bench/sweep_efficiency.py --report DIR            # only rewrite the report from DIR/<task>/runs.json

The space is what a user would search with LoRA: 6 learning rates x 3 ranks x 2 batch sizes = 36
configurations, on two tasks:

- ``letters``: the built-in task (tiny model as built). A trial trains 2 epochs of 1,500 examples and
  evaluates every 375 examples.
- ``instruct``: open-ended instructions in Alpaca format (``bench/instruct_task.py``: arithmetic, list and
  word transforms asked with several wordings, plus free-form descriptions), trained with ``data=alpaca``
  from a tiny model first pre-trained with ``stage=pt`` (full fine-tuning) on a generated prose corpus that
  states the same skills; each trial starts from that run (``stage.init_run``). A trial trains 2 epochs of
  750 examples (the longer samples make it cost about what a letters trial costs) and evaluates every 250.

1. The exhaustive grid runs once per task (ftrun sweeper, sampler grid, warm workers; the two batch sizes in
   two concurrent sweeps, one core each). Budget = ``--budget-share`` (default 0.2) of its trial-seconds.
2. Each sweep configuration runs with 3 sampler seeds and that budget (``hydra.sweeper.budget_trial_s``):
   TPE and random (and, with ``--configs``, TPE + median, TPE + Hyperband and its fresh/2-slot variants).
   ``one_epoch`` is "one epoch is all you need" (Egele et al. 2023) as a procedure of two sweeps: the whole
   grid at the lowest fidelity (each trial stopped at its first evaluation by a threshold pruner no loss
   passes), then the top ``--one-epoch-k`` of those first evaluations trained fully (enqueued); both phases'
   trial-seconds count. Its result does not depend on the sampler seed (the grid is the same set in any
   order), so it runs once. ``auto`` is ``sweep=auto`` as shipped (``ftrun/conf/sweep/auto.yaml``: its
   sampler, pruner and other settings, read at run time) with this bench's space on the command line, which
   replaces the priors' keys; a sweep=auto trial trains under the preset's ``scheduler=wsd``, and its value is
   compared with the (cosine-schedule) grid's best all the same: the grid is what a user would otherwise run.
   One-slot sweeps run two at a time, each pinned to its own core with one thread; two-slot sweeps run alone.
3. Per configuration and seed: trial-seconds and wall seconds until a trial first reaches within 1% of the
   grid's best eval loss, and the best value reached by trials that finished within the budget; per
   configuration the median over seeds of those trial-seconds. Per trial: the time split into phases from
   each trial's ``result.json`` (``phases_s``) and the study's trial durations.

Results: ``bench/results/<--name>.{json,md}`` (``--publish``; default sweep_efficiency) and the run directory. MLflow tracking
is on, as in a user's sweep (one sqlite store per sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
LRS = [1e-4, 3e-4, 1e-3, 2e-3, 4e-3, 8e-3]
RANKS = [4, 16, 64]
BATCHES = [8, 16]
SEEDS = [0, 1, 2]
TPE = "{name:tpe,n_startup_trials:4}"
MEDIAN = "{name:median,n_startup_trials:3,n_warmup_steps:0}"
# pause and promote with decay branches spelled out on the command line (sweep=auto ships this search since
# 2026-12-05, with the priors' space: the ``auto`` row runs the preset itself)
PROMOTION = ["hydra.sweeper.sampler=tpe", "hydra.sweeper.pruner={name:promotion,reduction_factor:3}",
             "hydra.sweeper.rung_branch=0.15", "scheduler=wsd", "hydra.sweeper.n_trials=30"]
NO_TRIAL_PASSES = "{name:threshold,upper:0.0}"  # a loss is never <= 0: every trial stops at its first evaluation
SMOKE = False


def hyperband(min_resource: int) -> str:
    return f"{{name:hyperband,min_resource:{min_resource},reduction_factor:3}}"


class Task:
    """A benchmark task: the trial's fixed overrides, the examples between evaluations (the lowest rung),
    and what has to exist before a trial can run."""

    def __init__(self, name: str, label: str, eval_examples: int, trial: Callable[[Path], List[str]],
                 prepare: Callable[[Path], None] = lambda d: None):
        self.name, self.label, self.eval_examples, self._trial, self.prepare = name, label, eval_examples, trial, prepare

    def trial(self, task_dir: Path) -> List[str]:
        return self._trial(task_dir)


def letters_trial(_: Path) -> List[str]:
    if SMOKE:
        return ["data.num_train=64", "data.num_eval=16", "epochs=1", "train.eval_examples=16",
                "train.logging_steps=2", "train.save_steps=0"]
    return ["data.num_train=1500", "data.num_eval=64", "epochs=2", "train.eval_examples=375",
            "train.logging_steps=25", "train.save_steps=0"]


PT_NAME = "instruct-pt"


def instruct_pt_args(task_dir: Path) -> List[str]:
    """The base model's pre-training on the generated corpus (full fine-tuning of the tiny model)."""
    return ["stage=pt", "method=full", "data=alpaca", f"data.path={task_dir / 'task' / 'corpus.txt'}",
            f"name={PT_NAME}", f"output_root={task_dir / 'pt'}", "cutoff_len=128", "batch_size=16", "lr=1e-3",
            f"max_steps={10 if SMOKE else 300}", "train.eval_steps=100", "train.save_steps=0"]


def instruct_trial(task_dir: Path) -> List[str]:
    common = ["data=alpaca", f"data.path={task_dir / 'task' / 'instruct.json'}",
              f"stage.init_run={task_dir / 'pt' / PT_NAME}", "train.save_steps=0"]
    if SMOKE:
        return [*common, "data.max_samples=80", "data.val_size=16", "epochs=1", "train.eval_examples=16",
                "train.logging_steps=2"]
    return [*common, "data.val_size=64", "epochs=2", "train.eval_examples=250", "train.logging_steps=25"]


def prepare_instruct(task_dir: Path) -> None:
    """The task's files (deterministic) and the pre-trained base every trial starts from (once)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from instruct_task import build

    build(task_dir / "task")
    if any((task_dir / "pt" / PT_NAME).glob("*/result.json")):
        return
    print("  instruct: pre-training the base (stage=pt) ...", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{task_dir / 'pt.mlflow.db'}"}
    with open(task_dir / "pt.log", "a") as log:
        rc = subprocess.call([sys.executable, "-m", "ftrun", *instruct_pt_args(task_dir)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"the instruct task's pre-training failed; see {task_dir / 'pt.log'}")


TASKS = {
    "letters": Task("letters", "the built-in letters task", 375, letters_trial),
    "instruct": Task("instruct", "generated open-ended instructions (bench/instruct_task.py) from a stage=pt base",
                     250, instruct_trial, prepare_instruct),
}


def configs(task: Task) -> List[tuple]:
    """name, label, sweeper overrides, slots, runs by default."""
    hb = hyperband(16 if SMOKE else task.eval_examples)
    return [
        ("tpe", "TPE", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=none"], 1, True),
        ("random", "random", ["hydra.sweeper.sampler=random", "hydra.sweeper.pruner=none"], 1, True),
        ("one_epoch", "one epoch, then the top k (Egele et al. 2023)", [], 1, True),
        ("auto", "sweep=auto as shipped", ["sweep=auto"], 1, False),
        ("promotion", "TPE + pause and promote (WSD, rung decay branches)", PROMOTION, 1, False),
        ("tpe_median", "TPE + median pruning", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + MEDIAN],
         1, False),
        ("tpe_hyperband", "TPE + Hyperband", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + hb], 1, False),
        ("tpe_hyperband_fresh", "TPE + Hyperband, fresh process per trial",
         ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + hb, "hydra.sweeper.workers=fresh"], 1, False),
        ("tpe_hyperband_2slots", "TPE + Hyperband, 2 slots",
         ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + hb], 2, False),
    ]


CONFIG_NAMES = [c[0] for c in configs(TASKS["letters"])]
PHASES = ["start", "setup", "data", "model", "tracking", "trainer", "train", "eval", "save"]


def space_args(batch: Optional[int] = None) -> List[str]:
    return [f"lr=choice({','.join(map(str, LRS))})", f"rank=choice({','.join(map(str, RANKS))})",
            f"batch_size={batch}" if batch else f"batch_size=choice({','.join(map(str, BATCHES))})"]


def grid_size() -> int:
    return len(LRS) * len(RANKS) * len(BATCHES)


def launch(job: dict, cores: Optional[str]) -> subprocess.Popen:
    """``python -m ftrun -m ...`` for one sweep, pinned to ``cores`` with one thread per trial."""
    out, name = job["out"], job["name"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{out / name}.mlflow.db"}
    cmd = [sys.executable, "-m", "ftrun", "-m", *job["args"], f"hydra.sweep.dir={out / name}"]
    if cores is not None:
        cmd = ["taskset", "-c", cores, *cmd]
    with open(out / f"{name}.log", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_jobs(jobs: List[dict]) -> None:
    """One-slot sweeps two at a time (one on core 0, one on core 1), then two-slot sweeps alone on both.
    A job's ``then`` (a function returning the next job) runs right after it, as the next of its group."""
    todo, pending = [], list(jobs)
    while pending:
        j = pending.pop(0)
        if not (j["out"] / j["name"] / "done").is_file():
            todo.append(j)
        elif j.get("then"):
            pending.insert(0, j["then"]())
    for group in ([j for j in todo if j["slots"] == 1], [j for j in todo if j["slots"] == 2]):
        running: Dict[str, tuple] = {}
        free = ["0", "1"] if group and group[0]["slots"] == 1 else [None]
        while group or running:
            for key, (job, proc, core) in list(running.items()):
                if proc.poll() is not None:
                    if proc.returncode != 0:
                        raise SystemExit(f"sweep {key} failed; see {job['out'] / job['name']}.log")
                    (job["out"] / job["name"] / "done").write_text(time.strftime("%F %T"))
                    del running[key]
                    if job.get("then"):  # a sweep that needs this one's results starts next
                        group.insert(0, job["then"]())
                    free.append(core)
                    print(f"  {key} done", flush=True)
            while group and free:
                job, core = group.pop(0), free.pop(0)
                key = f"{job['out'].name}/{job['name']}"
                running[key] = (job, launch(job, core), core)
                print(f"  {key} started on " + (f"core {core}" if core else "both cores"), flush=True)
            time.sleep(1)


def load_study(out: Path, name: str):
    import optuna

    (db,) = (out / name).glob("*/study.db")
    return optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")


def read_sweep(out: Path, name: str) -> dict:
    """The trials of one sweep, in the order they finished, with durations and phase splits."""
    from ftrun.contract import ATTR_TRIAL_DIR, RESULT_FILE, TRAINER_STATE

    study = load_study(out, name)
    trials = [t for t in study.trials if t.datetime_complete and "duplicate_of" not in t.user_attrs]
    trials.sort(key=lambda t: t.datetime_complete)
    start = min(t.datetime_start for t in trials).timestamp()
    records = []
    for t in trials:
        seconds = float(t.user_attrs.get("duration_s") or (t.datetime_complete - t.datetime_start).total_seconds())
        rec = {"number": t.number, "params": t.params, "state": t.state.name, "seconds": seconds,
               "end": t.datetime_complete.timestamp() - start, "begin": t.datetime_start.timestamp() - start,
               "value": t.value if t.state.name == "COMPLETE" else None,
               "worker_trial": t.user_attrs.get("worker_trial"), "pruned_at": None,
               "first_eval": first_report(t.intermediate_values)}
        if t.state.name == "PRUNED" and t.intermediate_values:
            rec["pruned_at"] = max(t.intermediate_values)
        try:
            result = json.loads((Path(t.user_attrs[ATTR_TRIAL_DIR]) / RESULT_FILE).read_text())
            phases = dict(result.get("phases_s") or {})
            phases["start"] = max(0.0, seconds - sum(phases.values()))
            rec["phases"] = phases
            rec["global_step"] = result.get("global_step")
            # the eval loss at every evaluation (bench/sweep_replay.py replays pruners from these curves)
            state = json.loads((Path(t.user_attrs[ATTR_TRIAL_DIR]) / TRAINER_STATE).read_text())
            rec["curve"] = [[h["step"], h["eval_loss"]] for h in state.get("log_history", []) if "eval_loss" in h]
        except (OSError, KeyError, ValueError):
            pass
        records.append(rec)
    summary = json.loads(next((out / name).glob("*/summary.json")).read_text())
    return {"name": name, "records": records, "compute": summary.get("compute"),
            "wall": max(r["end"] for r in records) if records else 0.0}


def first_report(intermediate: Dict[int, float]) -> Optional[float]:
    """A trial's value at its lowest reported step (the lowest rung), or None when it reported nothing."""
    return intermediate[min(intermediate)] if intermediate else None


def top_k(trials: Sequence, k: int, maximize: bool = False) -> List[dict]:
    """The params of the ``k`` trials best at their first evaluation (Optuna FrozenTrials), best first;
    ties keep trial order. Trials that reported nothing are left out."""
    scored = [(first_report(t.intermediate_values), t.number, t.params) for t in trials]
    scored = [s for s in scored if s[0] is not None]
    scored.sort(key=lambda s: ((-s[0] if maximize else s[0]), s[1]))
    return [dict(p) for _, _, p in scored[:k]]


def enqueue_arg(params: List[dict]) -> str:
    """``hydra.sweeper.enqueue=[{lr:0.004,rank:64,batch_size:8},...]``"""
    return "hydra.sweeper.enqueue=[" + ",".join(
        "{" + ",".join(f"{k}:{v!r}" for k, v in p.items()) + "}" for p in params) + "]"


def spent_by(records: List[dict], when: float) -> float:
    """Trial-seconds the sweep had used by ``when`` (seconds from its start): every trial that ended by then in
    full, and one still open then (running, or paused at a rung and ended later, hydra.sweeper.pruner=promotion)
    for as much of its seconds as fit between its start and ``when`` (records without ``begin``: in full)."""
    spent = 0.0
    for r in records:
        if r["end"] <= when or "begin" not in r:
            spent += r["seconds"] if r["end"] <= when else 0.0
        elif r["begin"] < when:
            spent += min(r["seconds"], when - r["begin"])
    return spent


def first_within(records: List[dict], target: float) -> Optional[dict]:
    """Trial-seconds (all that the sweep had used by then, paused trials' included), wall seconds and trials
    until a complete trial first reaches ``target`` (a pruned trial's value does not count)."""
    for i, r in enumerate(records):
        if r["value"] is not None and r["value"] <= target:
            return {"trial_s": spent_by(records, r["end"]), "wall_s": r["end"], "trials": i + 1}
    return None


def best_within_budget(records: List[dict], budget: float) -> Optional[float]:
    best = None
    for r in records:
        if spent_by(records, r["end"]) > budget:
            break
        if r["value"] is not None:
            best = r["value"] if best is None else min(best, r["value"])
    return best


def median_to_within(hits: List[Optional[dict]]) -> Optional[float]:
    """The median over seeds of the trial-seconds to within 1%; a seed that never got there counts as
    infinite, so the median is None (not reached) when half or more of the seeds missed."""
    if not hits:
        return None
    m = statistics.median([h["trial_s"] if h else math.inf for h in hits])
    return None if math.isinf(m) else m


def chain(parts: List[dict]) -> dict:
    """Sweeps run one after the other as one procedure: their records in order, wall times offset."""
    if len(parts) == 1:
        return parts[0]
    records, offset = [], 0.0
    for part in parts:
        records += [{**r, "end": r["end"] + offset} for r in part["records"]]
        offset += part["wall"]
    return {"name": "+".join(p["name"] for p in parts), "records": records, "wall": offset,
            "compute": [p.get("compute") for p in parts]}


def overhead(records: List[dict], first_of_worker: bool = True) -> Optional[dict]:
    """Mean seconds per phase, and the share of trial wall time outside the training loop
    (training + the evaluations inside it)."""
    rs = [r for r in records if "phases" in r and r["state"] == "COMPLETE"
          and (first_of_worker or r.get("worker_trial") != 1)]
    if not rs:
        return None
    mean = {p: sum(r["phases"].get(p, 0.0) for r in rs) / len(rs) for p in PHASES}
    wall = sum(r["seconds"] for r in rs) / len(rs)
    loop = mean["train"] + mean["eval"]
    return {"trials": len(rs), "wall_s": wall, "phases_s": mean, "overhead_share": (wall - loop) / wall,
            "training_share": mean["train"] / wall}


def grid_records(grid: List[dict]) -> List[dict]:
    for part in grid:  # each half of the grid fixed one batch size
        for r in part["records"]:
            r["params"].setdefault("batch_size", int(part["name"].rsplit("_b", 1)[1]))
    return [r for part in grid for r in part["records"]]


def task_report(task: str, data: dict) -> List[str]:
    records = grid_records(data["grid"])
    done = [r for r in records if r["value"] is not None]
    target = min(r["value"] for r in done)
    worst = max(r["value"] for r in done)
    total = sum(r["seconds"] for r in records)
    share = data["budget_share"]
    budget = total * share
    best_cfg = min(done, key=lambda r: r["value"])
    near = sum(1 for r in done if r["value"] <= target * 1.01)
    near5 = sum(1 for r in done if r["value"] <= target * 1.05)
    lines = [
        f"## Task `{task}`: {data['label']}", "",
        f"Trial: `{' '.join(data['trial'])}`. Load average when its grid started: {data.get('load', float('nan')):.1f}.",
        "",
        f"Exhaustive grid (warm workers): best eval_loss **{target:.4f}** "
        f"({', '.join(f'{k}={v}' for k, v in best_cfg['params'].items())}), worst {worst:.4f} "
        f"({100 * (worst / target - 1):.0f}% above); {near} of {len(records)} configurations within 1% of the best, "
        f"{near5} within 5%; {total:.0f} trial-seconds in all. **Budget = {share:g} of it = {budget:.0f} "
        f"trial-seconds.**", "",
        "| configuration | seed | trials (pruned) | trial-s to within 1% | wall s to within 1% | "
        "best within budget | within 1% |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, label in data["configs"]:
        ok, hits, seeds = 0, [], 0
        for key, run in sorted(data["sweeps"].items()):
            if not key.startswith(name + "_s") or not key[len(name) + 2:].isdigit():
                continue
            seeds += 1
            rs = run["records"]
            hit = first_within(rs, target * 1.01)
            hits.append(hit)
            best = best_within_budget(rs, budget)
            within = best is not None and best <= target * 1.01
            ok += within
            pruned = sum(r["state"] == "PRUNED" for r in rs)
            reach = f"{hit['trial_s']:.0f} ({hit['trials']} trials) | {hit['wall_s']:.0f}" if hit else "not reached | -"
            shown = f"{best:.4f}" if best is not None else "-"
            lines.append(f"| {label} | {key.rsplit('_s', 1)[1]} | {len(rs)} ({pruned}) | {reach} | {shown} | "
                         f"{'yes' if within else 'no'} |")
        if seeds:
            verdicts.append((label, ok, seeds, median_to_within(hits)))
    lines += ["", f"Per configuration: reached within 1% of the grid's best on {share:g} of its compute (seeds), "
                  "and the median over seeds of the trial-seconds to first reach within 1% (with no budget "
                  "stop in the count; 'not reached' when half or more of the seeds never got there):", "",
              "| configuration | within 1% on the budget | median trial-s to within 1% | share of the grid's |",
              "|---|---|---|---|"]
    for label, ok, seeds, med in verdicts:
        shown = f"{med:.0f}" if med is not None else "not reached"
        rel = f"{med / total:.2f}" if med is not None else "-"
        lines.append(f"| {label} | **{ok}/{seeds}** | {shown} | {rel} |")
    lines += ["", "### Where a trial's time goes (mean seconds per complete trial)", "",
              "| trials | n | wall | " + " | ".join(PHASES) + " | outside the training loop |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|"]
    warm = records + [r for k, v in data["sweeps"].items() if "fresh" not in k for r in v["records"]]
    fresh = [r for k, v in data["sweeps"].items() if "fresh" in k for r in v["records"]]
    for label, rs, first in (("warm workers, all trials", warm, True),
                             ("warm workers, after each worker's first trial", warm, False),
                             ("fresh process per trial", fresh, True)):
        o = overhead(rs, first)
        if o:
            lines.append(f"| {label} | {o['trials']} | {o['wall_s']:.1f} | "
                         + " | ".join(f"{o['phases_s'][p]:.2f}" for p in PHASES)
                         + f" | **{100 * o['overhead_share']:.1f}%** |")
    lines += ["", "### The exhaustive grid", "", "| lr | rank | batch_size | eval_loss | vs best | trial-s |",
              "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["params"]["lr"], r["params"]["rank"], r["params"]["batch_size"])):
        p = r["params"]
        value = f"{r['value']:.4f} | +{100 * (r['value'] / target - 1):.1f}%" if r["value"] is not None else "- | -"
        lines.append(f"| {p['lr']} | {p['rank']} | {p['batch_size']} | {value} | {r['seconds']:.1f} |")
    return lines + [""]


def report(tasks: Dict[str, dict], meta: dict) -> str:
    space = next(iter(tasks.values())).get("space") or {"lr": LRS, "rank": RANKS, "batch_size": BATCHES}
    lines = [f"# Sweep efficiency ({meta['date']}; {meta['machine']})", "",
             "Space: " + " x ".join(f"{k} in {v}" for k, v in space.items())
             + f" = {math.prod(len(v) for v in space.values())} configurations, LoRA; "
             "every trial on one core with one thread (nice -n 10); MLflow on. Load average at the start: "
             f"{meta['load']:.1f}." + (f" {meta['note']}" if meta.get("note") else ""), "",
             "Rows: per sampler seed. 'trial-s to within 1%': the trial-seconds the sweep had used when a "
             "complete trial first reached within 1% of the grid's best eval_loss (pruned trials count their "
             "seconds, not their value; a trial still running or paused at a rung then counts the seconds it "
             "had had since its start). 'one epoch, then the top k' runs once: its outcome does not depend on "
             "the sampler seed; both of its sweeps' trial-seconds count.", ""]
    for task, data in tasks.items():
        lines += task_report(task, data)
    lines += ["start: process start, imports and config composing (fresh), or composing and hand-over (warm), "
              "i.e. the trial's wall time not accounted for by a phase; train excludes the evaluations inside the "
              "loop (eval); 'outside the training loop' = 1 - (train + eval) / wall."]
    return "\n".join(lines) + "\n"


def run_task_grid(task: Task, task_dir: Path) -> List[dict]:
    task_dir.mkdir(parents=True, exist_ok=True)
    task.prepare(task_dir)
    load_file = task_dir / "load.json"
    if not load_file.is_file():
        load_file.write_text(json.dumps(os.getloadavg()[0]))
    jobs = [{"name": f"grid_b{b}", "slots": 1, "out": task_dir,
             "args": [*space_args(b), "hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=none",
                      *task.trial(task_dir)]} for b in BATCHES]
    run_jobs(jobs)
    return [read_sweep(task_dir, j["name"]) for j in jobs]


def sweep_jobs(task: Task, task_dir: Path, chosen: List[str], seeds: List[int], budget: float) -> List[dict]:
    jobs = []
    for name, _, extra, slots, _ in configs(task):
        if name not in chosen:
            continue
        for seed in (seeds[:1] if name == "one_epoch" else seeds):
            common = [*space_args(), f"hydra.sweeper.seed={seed}", *task.trial(task_dir)]
            if name == "one_epoch":
                jobs.append({"name": f"one_epoch_s{seed}_low", "slots": 1, "out": task_dir, "seed": seed,
                             "args": [*common, "hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=" + NO_TRIAL_PASSES,
                                      f"hydra.sweeper.n_trials={grid_size()}"]})
                continue
            trials = [] if name in ("auto", "promotion") else ["hydra.sweeper.n_trials=36",
                                                                 f"hydra.sweeper.n_jobs={slots}"]
            jobs.append({"name": f"{name}_s{seed}", "slots": slots, "out": task_dir, "seed": seed,
                         "args": [*extra, *common, *trials, f"hydra.sweeper.budget_trial_s={budget:.1f}"]})
    return jobs


def top_k_job(task: Task, task_dir: Path, low: dict, k: int) -> dict:
    """The second sweep of one-epoch: the ``k`` configurations best at the first evaluation, trained fully."""
    study = load_study(task_dir, low["name"])
    done = [t for t in study.trials if t.state.name in ("PRUNED", "COMPLETE")]
    best = top_k(done, k, maximize=study.direction.name == "MAXIMIZE")
    seed = low["seed"]
    return {"name": f"one_epoch_s{seed}_top", "slots": 1, "out": task_dir,
            "args": [*space_args(), f"hydra.sweeper.seed={seed}", *task.trial(task_dir),
                     "hydra.sweeper.sampler=random", "hydra.sweeper.pruner=none", enqueue_arg(best),
                     f"hydra.sweeper.n_trials={len(best)}"]}


def main() -> None:
    global LRS, RANKS, SMOKE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="letters,instruct",
                    help=f"comma-separated tasks ({', '.join(TASKS)}; default both)")
    ap.add_argument("--configs", default=",".join(c[0] for c in configs(TASKS["letters"]) if c[4]),
                    help=f"comma-separated sweep configurations ({', '.join(CONFIG_NAMES)}); default %(default)s")
    ap.add_argument("--seeds", default=None, help="comma-separated sampler seeds (default 0,1,2)")
    ap.add_argument("--budget-share", type=float, default=0.2,
                    help="the sweeps' budget as a share of the grid's trial-seconds (default %(default)s)")
    ap.add_argument("--one-epoch-k", type=int, default=3,
                    help="one_epoch: how many of the best first evaluations to train fully (default %(default)s)")
    ap.add_argument("--out-dir", help="run directory (default outputs/bench/sweep_efficiency/<time>); "
                                      "an existing one is continued")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: record the sweeps of --configs/--seeds that finished (after an interrupted run)")
    ap.add_argument("--grid-only", action="store_true", help="stop after the tasks' grids")
    ap.add_argument("--report", metavar="DIR", help="only rewrite the report from DIR/<task>/runs.json")
    ap.add_argument("--publish", action="store_true", help="also write bench/results/<name>.{json,md}")
    ap.add_argument("--name", default="sweep_efficiency", help="the results' file name (default %(default)s)")
    ap.add_argument("--note", help="a sentence on the conditions of the run, kept in the report")
    ap.add_argument("--smoke", action="store_true", help="a 4-point space, tiny trials, one seed: checks the script")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [f"--task {t}" for t in tasks if t not in TASKS] + [f"--configs {c}" for c in chosen if c not in CONFIG_NAMES]
    if bad:
        ap.error(f"{'; '.join(bad)}: unknown (tasks: {', '.join(TASKS)}; configurations: {', '.join(CONFIG_NAMES)})")
    if not 0 < args.budget_share <= 1 or args.one_epoch_k < 1:
        ap.error("--budget-share takes a share in (0, 1] and --one-epoch-k a count of at least 1")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else SEEDS
    except ValueError:
        ap.error(f"--seeds {args.seeds}: give integers separated by commas, e.g. 0,1,2")
    if args.smoke:
        SMOKE = True
        LRS, RANKS, seeds = [1e-3, 3e-3], [4], seeds[:1]

    if args.report:
        out = Path(args.report)
        if not (out / "meta.json").is_file():
            ap.error(f"--report {out}: no meta.json there; give the run directory of an earlier run")
        meta = json.loads((out / "meta.json").read_text())
    else:
        out = Path(args.out_dir or ROOT / "outputs" / "bench" / "sweep_efficiency" / time.strftime("%Y%m%d-%H%M%S"))
        out.mkdir(parents=True, exist_ok=True)
        meta_file = out / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, "
                       f"Python {platform.python_version()}"}
        meta_file.write_text(json.dumps(meta))
        grids, budgets = {}, {}
        for name in tasks:
            if args.collect and not all((out / name / f"grid_b{b}" / "done").is_file() for b in BATCHES):
                raise SystemExit(f"--collect: {out / name} has no finished grid; run without --collect first")
            print(f"{name}: grid ...", flush=True)
            grids[name] = run_task_grid(TASKS[name], out / name)
            budgets[name] = sum(r["seconds"] for part in grids[name] for r in part["records"]) * args.budget_share
            print(f"{name}: grid done; budget {budgets[name]:.0f} trial-seconds", flush=True)
            write_runs(out / name, TASKS[name], grids[name], {}, args.budget_share, chosen)
        if not args.grid_only:
            jobs = {name: sweep_jobs(TASKS[name], out / name, chosen, seeds, budgets[name]) for name in tasks}
            for name, js in jobs.items():
                for j in js:
                    if j["name"].endswith("_low"):
                        j["then"] = (lambda name=name, j=j: top_k_job(TASKS[name], out / name, j, args.one_epoch_k))
            # seed by seed across the tasks, so that an interrupted run has every configuration's first seeds
            order = sorted((j for js in jobs.values() for j in js), key=lambda j: j["seed"])
            if not args.collect:
                run_jobs(order)
            for name in tasks:
                sweeps = {}
                for j in jobs[name]:
                    parts = [j["name"], f"one_epoch_s{j['seed']}_top"] if j["name"].endswith("_low") else [j["name"]]
                    if not all((out / name / p / "done").is_file() for p in parts):
                        print(f"  {name}/{j['name']}: not finished, left out", flush=True)
                        continue
                    key = f"one_epoch_s{j['seed']}" if len(parts) == 2 else j["name"]
                    sweeps[key] = chain([read_sweep(out / name, p) for p in parts])
                write_runs(out / name, TASKS[name], grids[name], sweeps, args.budget_share, chosen)
    if args.note:
        meta["note"] = args.note
        (out / "meta.json").write_text(json.dumps(meta))
    data = {name: json.loads((out / name / "runs.json").read_text())
            for name in TASKS if (out / name / "runs.json").is_file()}
    if not data:
        raise SystemExit(f"{out}: no task has a runs.json yet")
    text = report(data, meta)
    (out / "report.md").write_text(text)
    if args.publish:
        results = ROOT / "bench" / "results"
        results.mkdir(exist_ok=True)
        (results / f"{args.name}.md").write_text(text)
        (results / f"{args.name}.json").write_text(json.dumps({"meta": meta, "tasks": data}, indent=1,
                                                                  default=str))
    print(text)
    print(f"written to {out}")


def write_runs(task_dir: Path, task: Task, grid: List[dict], sweeps: Dict[str, dict], share: float,
               chosen: List[str]) -> None:
    """``<task>/runs.json``: what the report reads; sweeps already recorded by an earlier call are kept."""
    path = task_dir / "runs.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    labels = {c[0]: c[1] for c in configs(task)}
    names = list(dict.fromkeys([n for n, _ in old.get("configs", [])] + chosen))
    data = {"label": task.label, "space": {"lr": LRS, "rank": RANKS, "batch_size": BATCHES}, "trial": task.trial(task_dir), "load": json.loads((task_dir / "load.json").read_text()),
            "budget_share": share, "configs": [[n, labels[n]] for n in names if n in labels],
            "grid": grid, "sweeps": {**old.get("sweeps", {}), **sweeps}}
    path.write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()
