"""How much compute a sweep needs to find what the exhaustive grid finds.

    python bench/sweep_efficiency.py                       # about an hour on 2 idle CPU cores
    python bench/sweep_efficiency.py --out-dir DIR         # continue an interrupted run (finished sweeps are read back)
    python bench/sweep_efficiency.py --report DIR/runs.json  # only rewrite the report

The space is what a user would search on the built-in letters task with LoRA:
6 learning rates x 3 ranks x 2 batch sizes = 36 configurations. A trial trains
2 epochs of 1,500 examples (188 or 375 optimizer steps) and evaluates every 375
examples, so training is most of even a fresh-process trial's time.

1. The exhaustive grid runs once (ftrun sweeper, sampler grid, warm workers; the
   two batch sizes in two concurrent sweeps, one core each). Its per-trial
   results are kept. Budget = one third of its total trial-seconds.
2. Each sweep configuration runs with 3 sampler seeds and that budget
   (``hydra.sweeper.budget_trial_s``): TPE; TPE + median pruning; TPE + Hyperband;
   random; TPE + Hyperband with fresh processes; TPE + Hyperband with 2 slots.
   One-slot sweeps run two at a time, each pinned to its own core with one
   thread; two-slot sweeps run alone on both cores. Every trial therefore runs
   on one core with one thread, so trial-seconds compare across configurations.
3. Per configuration and seed: trial-seconds and wall seconds until a trial
   first reaches within 1% of the grid's best eval loss, and the best value
   reached by trials that finished within the budget. Per trial: the time split
   into start (process start, imports, config composing, hand-over), setup,
   data, model, tracking, trainer, training, evaluation and saving, from each
   trial's ``result.json`` (``phases_s``) and the study's trial durations.

Results: ``bench/results/sweep_efficiency.{json,md}`` (``--publish``) and the run
directory. MLflow tracking is on, as in a user's sweep (one sqlite store per sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ftrun.contract import ATTR_TRIAL_DIR, RESULT_FILE

ROOT = Path(__file__).resolve().parents[1]
LRS = [1e-4, 3e-4, 1e-3, 2e-3, 4e-3, 8e-3]
RANKS = [4, 16, 64]
BATCHES = [8, 16]
EVAL_EXAMPLES = 375
TRIAL = ["data.num_train=1500", "data.num_eval=64", "epochs=2", f"train.eval_examples={EVAL_EXAMPLES}",
         "train.logging_steps=25", "train.save_steps=0"]
SEEDS = [0, 1, 2]
TPE = "{name:tpe,n_startup_trials:4}"
MEDIAN = "{name:median,n_startup_trials:3,n_warmup_steps:0}"
HYPERBAND = f"{{name:hyperband,min_resource:{EVAL_EXAMPLES},reduction_factor:3}}"
CONFIGS = [  # name, label, sweeper overrides, slots
    ("tpe", "TPE", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=none"], 1),
    ("tpe_median", "TPE + median pruning", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + MEDIAN], 1),
    ("tpe_hyperband", "TPE + Hyperband", ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + HYPERBAND], 1),
    ("random", "random", ["hydra.sweeper.sampler=random", "hydra.sweeper.pruner=none"], 1),
    ("tpe_hyperband_fresh", "TPE + Hyperband, fresh process per trial",
     ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + HYPERBAND, "hydra.sweeper.workers=fresh"], 1),
    ("tpe_hyperband_2slots", "TPE + Hyperband, 2 slots",
     ["hydra.sweeper.sampler=" + TPE, "hydra.sweeper.pruner=" + HYPERBAND], 2),
]
PHASES = ["start", "setup", "data", "model", "tracking", "trainer", "train", "eval", "save"]


def space_args() -> List[str]:
    return [f"lr=choice({','.join(map(str, LRS))})", f"rank=choice({','.join(map(str, RANKS))})"]


def launch(name: str, args: List[str], out: Path, cores: Optional[str]) -> subprocess.Popen:
    """``python -m ftrun -m ...`` for one sweep, pinned to ``cores`` with one thread per trial."""
    sweep_dir = out / name
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{out / name}.mlflow.db"}
    cmd = [sys.executable, "-m", "ftrun", "-m", *args, *TRIAL, f"hydra.sweep.dir={sweep_dir}"]
    if cores is not None:
        cmd = ["taskset", "-c", cores, *cmd]
    log = open(out / f"{name}.log", "a")
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_jobs(jobs: List[dict], out: Path) -> None:
    """One-slot sweeps two at a time (one on core 0, one on core 1), then two-slot sweeps alone on both."""
    todo = [j for j in jobs if not (out / j["name"] / "done").is_file()]
    for group in ([j for j in todo if j["slots"] == 1], [j for j in todo if j["slots"] == 2]):
        running: Dict[str, tuple] = {}
        free = ["0", "1"] if group and group[0]["slots"] == 1 else [None]
        while group or running:
            for name, (proc, core) in list(running.items()):
                if proc.poll() is not None:
                    if proc.returncode != 0:
                        raise SystemExit(f"sweep {name} failed; see {out / name}.log")
                    (out / name / "done").write_text(time.strftime("%F %T"))
                    del running[name]
                    free.append(core)
                    print(f"  {name} done", flush=True)
            while group and free:
                job, core = group.pop(0), free.pop(0)
                running[job["name"]] = (launch(job["name"], job["args"], out, core), core)
                print(f"  {job['name']} started on " + (f"core {core}" if core else "both cores"), flush=True)
            time.sleep(1)


def read_sweep(out: Path, name: str) -> dict:
    """The trials of one sweep, in the order they finished, with durations and phase splits."""
    import optuna

    (db,) = (out / name).glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.datetime_complete and "duplicate_of" not in t.user_attrs]
    trials.sort(key=lambda t: t.datetime_complete)
    start = min(t.datetime_start for t in trials).timestamp()
    records = []
    for t in trials:
        seconds = float(t.user_attrs.get("duration_s") or (t.datetime_complete - t.datetime_start).total_seconds())
        rec = {"number": t.number, "params": t.params, "state": t.state.name, "seconds": seconds,
               "end": t.datetime_complete.timestamp() - start,
               "value": t.value if t.state.name == "COMPLETE" else None,
               "worker_trial": t.user_attrs.get("worker_trial"), "pruned_at": None}
        if t.state.name == "PRUNED" and t.intermediate_values:
            rec["pruned_at"] = max(t.intermediate_values)
        try:
            result = json.loads((Path(t.user_attrs[ATTR_TRIAL_DIR]) / RESULT_FILE).read_text())
            phases = dict(result.get("phases_s") or {})
            phases["start"] = max(0.0, seconds - sum(phases.values()))
            rec["phases"] = phases
            rec["global_step"] = result.get("global_step")
        except (OSError, KeyError, ValueError):
            pass
        records.append(rec)
    summary = json.loads(next((out / name).glob("*/summary.json")).read_text())
    return {"name": name, "records": records, "compute": summary.get("compute"),
            "wall": max(r["end"] for r in records) if records else 0.0}


def first_within(records: List[dict], target: float) -> Optional[dict]:
    spent = 0.0
    for i, r in enumerate(records):
        spent += r["seconds"]
        if r["value"] is not None and r["value"] <= target:
            return {"trial_s": spent, "wall_s": r["end"], "trials": i + 1}
    return None


def best_within_budget(records: List[dict], budget: float) -> Optional[float]:
    spent, best = 0.0, None
    for r in records:
        spent += r["seconds"]
        if spent > budget:
            break
        if r["value"] is not None:
            best = r["value"] if best is None else min(best, r["value"])
    return best


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


def report(runs: dict, meta: dict) -> str:
    grid = runs["grid"]
    for part in grid:  # each half of the grid fixed one batch size
        for r in part["records"]:
            r["params"].setdefault("batch_size", int(part["name"].rsplit("_b", 1)[1]))
    records = [r for part in grid for r in part["records"]]
    target = min(r["value"] for r in records if r["value"] is not None)
    total = sum(r["seconds"] for r in records)
    budget = total / 3
    best_cfg = min((r for r in records if r["value"] is not None), key=lambda r: r["value"])
    near = sum(1 for r in records if r["value"] is not None and r["value"] <= target * 1.01)
    lines = [
        f"# Sweep efficiency ({meta['date']}; {meta['machine']})", "",
        f"Space: lr in {LRS} x rank in {RANKS} x batch_size in {BATCHES} = {len(records)} configurations, "
        f"LoRA on the built-in letters task; trial: `{' '.join(TRIAL)}`; every trial on one core, one thread; "
        f"MLflow on. Load average at the start: {meta['load']:.1f}." + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        f"Exhaustive grid (warm workers): best eval_loss **{target:.4f}** "
        f"({', '.join(f'{k}={v}' for k, v in best_cfg['params'].items())}); {near} of {len(records)} configurations "
        f"are within 1% of it; {total:.0f} trial-seconds in all. **Budget = one third = {budget:.0f} trial-seconds.**",
        "",
        "| configuration | seed | trials (pruned) | trial-s to within 1% | wall s to within 1% | "
        "best within budget | within 1% |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for name, label, _, _ in CONFIGS:
        ok = 0
        for seed in SEEDS:
            run = runs["sweeps"].get(f"{name}_s{seed}")
            if run is None:
                continue
            rs = run["records"]
            hit = first_within(rs, target * 1.01)
            best = best_within_budget(rs, budget)
            within = best is not None and best <= target * 1.01
            ok += within
            pruned = sum(r["state"] == "PRUNED" for r in rs)
            reach = f"{hit['trial_s']:.0f} ({hit['trials']} trials) | {hit['wall_s']:.0f}" if hit else "not reached | -"
            shown = f"{best:.4f}" if best is not None else "-"
            lines.append(f"| {label} | {seed} | {len(rs)} ({pruned}) | {reach} | {shown} | "
                         f"{'yes' if within else 'no'} |")
        verdicts[label] = ok
    lines += ["", "Reached within 1% of the grid's best on one third of its compute, out of 3 seeds:", ""]
    lines += [f"- {label}: **{ok}/3**" for label, ok in verdicts.items()]
    lines += ["", "## Where a trial's time goes (mean seconds per complete trial)", "",
              "| trials | n | wall | " + " | ".join(PHASES) + " | outside the training loop |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|"]
    warm = [r for part in grid for r in part["records"]]
    warm += [r for k, v in runs["sweeps"].items() if "fresh" not in k for r in v["records"]]
    fresh = [r for k, v in runs["sweeps"].items() if "fresh" in k for r in v["records"]]
    for label, rs, first in (("warm workers, all trials", warm, True),
                             ("warm workers, after each worker's first trial", warm, False),
                             ("fresh process per trial", fresh, True)):
        o = overhead(rs, first)
        if o:
            lines.append(f"| {label} | {o['trials']} | {o['wall_s']:.1f} | "
                         + " | ".join(f"{o['phases_s'][p]:.2f}" for p in PHASES)
                         + f" | **{100 * o['overhead_share']:.1f}%** |")
    lines += ["", "## The exhaustive grid", "", "| lr | rank | batch_size | eval_loss | trial-s |", "|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["params"]["lr"], r["params"]["rank"], r["params"]["batch_size"])):
        p = r["params"]
        lines.append(f"| {p['lr']} | {p['rank']} | {p['batch_size']} | {r['value']:.4f} | {r['seconds']:.1f} |")
    lines += ["", "start: process start, imports and config composing (fresh), or composing and hand-over (warm), "
              "i.e. the trial's wall time not accounted for by a phase; train excludes the evaluations inside the "
              "loop (eval); 'outside the training loop' = 1 - (train + eval) / wall."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", help="run directory (default outputs/bench/sweep_efficiency/<time>); "
                                      "an existing one is continued")
    ap.add_argument("--report", metavar="RUNS_JSON", help="only rewrite the report from an earlier runs.json")
    ap.add_argument("--publish", action="store_true", help="also write bench/results/sweep_efficiency.{json,md}")
    ap.add_argument("--note", help="a sentence on the conditions of the run, kept in the report")
    ap.add_argument("--smoke", action="store_true", help="a 4-point space, tiny trials, one seed: checks the script")
    args = ap.parse_args()
    if args.smoke:
        global LRS, RANKS, TRIAL, SEEDS
        LRS, RANKS, SEEDS = [1e-3, 3e-3], [4], [0]
        TRIAL = ["data.num_train=64", "data.num_eval=16", "epochs=1", "train.eval_examples=16",
                 "train.logging_steps=2", "train.save_steps=0"]
    if args.report:
        out = Path(args.report).parent
        data = json.loads(Path(args.report).read_text())
        if args.note:
            data["meta"]["note"] = args.note
    else:
        out = Path(args.out_dir or ROOT / "outputs" / "bench" / "sweep_efficiency" / time.strftime("%Y%m%d-%H%M%S"))
        out.mkdir(parents=True, exist_ok=True)
        meta_file = out / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, "
                       f"Python {platform.python_version()}"}
        meta_file.write_text(json.dumps(meta))
        print("grid ...", flush=True)
        grid_jobs = [{"name": f"grid_b{b}", "slots": 1,
                      "args": [*space_args(), f"batch_size={b}", "hydra.sweeper.sampler=grid",
                               "hydra.sweeper.pruner=none"]} for b in BATCHES]
        run_jobs(grid_jobs, out)
        grid = [read_sweep(out, j["name"]) for j in grid_jobs]
        budget = sum(r["seconds"] for part in grid for r in part["records"]) / 3
        print(f"grid done: budget {budget:.0f} trial-seconds", flush=True)
        jobs = []
        for seed in SEEDS:
            for name, _, extra, slots in CONFIGS:
                jobs.append({"name": f"{name}_s{seed}", "slots": slots,
                             "args": [*space_args(), f"batch_size=choice({','.join(map(str, BATCHES))})", *extra,
                                      f"hydra.sweeper.seed={seed}", "hydra.sweeper.n_trials=36",
                                      f"hydra.sweeper.n_jobs={slots}", f"hydra.sweeper.budget_trial_s={budget:.1f}"]})
        run_jobs(jobs, out)
        data = {"meta": meta, "grid": grid, "sweeps": {j["name"]: read_sweep(out, j["name"]) for j in jobs}}
        (out / "runs.json").write_text(json.dumps(data, indent=1, default=str))
    text = report(data, data["meta"])
    (out / "report.md").write_text(text)
    if args.publish:
        results = ROOT / "bench" / "results"
        results.mkdir(exist_ok=True)
        (results / "sweep_efficiency.md").write_text(text)
        (results / "sweep_efficiency.json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
