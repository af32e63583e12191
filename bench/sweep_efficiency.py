"""How much compute a sweep needs to find what an exhaustive grid finds.

    python bench/sweep_efficiency.py [--out bench/results] [--trials 6]

On the built-in letters task with one small search space (lr in 4 values x rank
in 2 values = a grid of 8), this runs

1. Hydra's basic sweeper over the whole grid (in one process, one job after another);
2. the ftrun sweeper with TPE and no pruning (1 slot);
3. the ftrun sweeper with TPE and median pruning (1 slot);
4. the ftrun sweeper with TPE, median pruning and 2 slots;

and reports, for each, the trial-seconds (sum of the trials' own wall times, in
the order they finished) and the wall-clock seconds needed to first reach the
best eval loss the grid found, and the per-trial overhead of the ftrun sweeper
(process start, imports, data and model load, final eval and save) as a share
of trial time, read from the trials' logs.

Sized to finish in about 10 minutes on 2 idle CPU cores: 96 training / 32 eval
examples, 12 optimizer steps of batch 8, an evaluation every 3 steps, MLflow
off, 5 trials per ftrun sweep. The figures are for that tiny setting; with real models and longer trials
the per-process overhead shrinks relative to training and pruning saves more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LRS = "1e-4,1e-3,3e-3,1e-2"
RANKS = "4,16"
TRIAL = ["data.num_train=96", "data.num_eval=32", "max_steps=12", "batch_size=8", "train.logging_steps=3",
         "train.eval_steps=3", "train.save_steps=0", "tracking.enabled=false"]
TOL = 1e-6


def ftrun_multirun(args, log_path: Path) -> float:
    start = time.time()
    with open(log_path, "w") as f:
        out = subprocess.run([sys.executable, "-m", "ftrun", "-m", *args], cwd=ROOT, stdout=f,
                             stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise SystemExit(f"sweep failed; see {log_path}")
    return time.time() - start


def basic_grid(out: Path) -> dict:
    """Hydra's basic sweeper over the grid: jobs run in-process, one after another."""
    sweep_dir = out / "basic"
    n = len(LRS.split(",")) * len(RANKS.split(","))
    if len(list(sweep_dir.glob("*/result.json"))) == n:  # --out-dir of an earlier run: read it back
        first = next(l for l in (out / "basic.log").read_text().splitlines() if "Launching" in l)
        start = datetime.strptime(first[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # after its imports
        wall = max(p.stat().st_mtime for p in sweep_dir.glob("*/result.json")) - start
    else:
        start = time.time()
        wall = ftrun_multirun(["hydra/sweeper=basic", f"lr={LRS}", f"rank={RANKS}", *TRIAL,
                               f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"],
                              out / "basic.log")
    jobs = sorted((d for d in sweep_dir.iterdir() if (d / "result.json").is_file()), key=lambda d: int(d.name))
    records, prev = [], start
    for d in jobs:
        end = (d / "result.json").stat().st_mtime
        r = json.loads((d / "result.json").read_text())
        records.append({"value": r["eval_loss"], "seconds": end - prev, "end": end - start})
        prev = end
    return {"name": "Hydra basic sweeper, full grid (in-process)", "records": records, "wall": wall}


def ftrun_sweep(out: Path, name: str, label: str, n_trials: int, pruner: str, n_jobs: int) -> dict:
    import optuna

    sweep_dir = out / name
    start = time.time()
    log = out / f"{name}.log"
    if log.exists():  # --out-dir of an earlier run: the same command resumes the study (nothing left to train)
        log = log.with_suffix(".resumed.log")
    wall = ftrun_multirun([f"lr=choice({LRS})", f"rank=choice({RANKS})", *TRIAL,
                           f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={n_trials}",
                           f"hydra.sweeper.n_jobs={n_jobs}", "hydra.sweeper.sampler={name:tpe,n_startup_trials:3}",
                           "hydra.sweeper.seed=0", f"hydra.sweeper.pruner={pruner}"], log)
    (db,) = sweep_dir.glob("*/study.db")
    study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    trials = sorted((t for t in study.trials if t.datetime_complete), key=lambda t: t.datetime_complete)
    if trials:
        start = min(t.datetime_start for t in study.trials).timestamp()
        wall = max(t.datetime_complete for t in trials).timestamp() - start
    records, overheads = [], []
    for t in trials:
        secs = (t.datetime_complete - t.datetime_start).total_seconds()
        value = t.value if t.state.name == "COMPLETE" else None
        records.append({"value": value, "seconds": secs, "end": t.datetime_complete.timestamp() - start,
                        "state": t.state.name})
        o = trial_overhead(Path(t.user_attrs["trial_dir"]), secs) if "trial_dir" in t.user_attrs else None
        if o:  # repeats of a trained configuration have no process
            overheads.append(o)
    return {"name": label, "records": records, "wall": wall, "overheads": overheads,
            "pruned": sum(t.state.name == "PRUNED" for t in trials)}


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]*\]\[[A-Z]+\] - (.*)$")


def trial_overhead(trial_dir: Path, seconds: float) -> dict | None:
    """Split a trial's wall time using its log: start-up until the trainer exists, training, the rest."""
    try:
        result = json.loads((trial_dir / "result.json").read_text())
        lines = (trial_dir / "trial.log").read_text().splitlines()
    except OSError:
        return None
    stamps = []
    for line in lines:
        m = STAMP.match(line)
        if m:
            stamps.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)))
    if not stamps:
        return None
    train = float(result.get("train_time_s", 0.0))
    first_log = stamps[0][0]
    built = next((ts for ts, msg in stamps if msg.startswith("Building trainer")), first_log)
    done = stamps[-1][0]
    startup = seconds - (done - first_log)  # process start + imports before the first log line
    return {"seconds": seconds, "train": train, "startup_imports": max(0.0, startup),
            "load": built - first_log, "overhead": max(0.0, seconds - train)}


def first_reach(records, target: float):
    """(trial-seconds, wall seconds, trials) until a trial first reaches ``target``, or None."""
    total = 0.0
    for i, r in enumerate(records):
        total += r["seconds"]
        if r.get("value") is not None and r["value"] <= target + TOL:
            return total, r["end"], i + 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "sweep_efficiency"))
    ap.add_argument("--trials", type=int, default=5, help="trials per ftrun sweep (the grid has 8 points)")
    ap.add_argument("--report", metavar="RUNS_JSON", help="only rewrite the report from an earlier runs.json")
    ap.add_argument("--out-dir", help="continue an earlier run's directory (finished parts are read back)")
    args = ap.parse_args()
    if args.report:
        out = Path(args.report).parent
        runs = json.loads(Path(args.report).read_text())
        load = None
    else:
        out = Path(args.out_dir) if args.out_dir else Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        runs = [basic_grid(out)]
        median = "{name:median,n_startup_trials:2,n_warmup_steps:0}"
        runs.append(ftrun_sweep(out, "tpe", "ftrun TPE, no pruning, 1 slot", args.trials, "none", 1))
        runs.append(ftrun_sweep(out, "tpe_median", "ftrun TPE + median pruner, 1 slot", args.trials, median, 1))
        runs.append(ftrun_sweep(out, "tpe_median_2slots", "ftrun TPE + median pruner, 2 slots", args.trials,
                                median, 2))
        (out / "runs.json").write_text(json.dumps(runs, indent=2, default=str))
    target = min(r["value"] for r in runs[0]["records"])

    lines = [f"# Sweep efficiency ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores)", "",
             f"Space: lr in {{{LRS}}} x rank in {{{RANKS}}} (grid of 8); trial: {' '.join(TRIAL)}.",
             (f"Load average at the start: {load:.1f} (other work on the machine inflates every time)."
              if load is not None else ""),
             f"Best eval loss of the exhaustive grid: {target:.4f}; 'within 1%': the first trial <= {target * 1.01:.4f}.",
             "",
             "| sweeper | trials run | pruned | trial-s to grid best | wall s to grid best | trials | "
             "trial-s to within 1% | trials | best found | total trial-s | sweep wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        reach = first_reach(r["records"], target)
        near = first_reach(r["records"], target * 1.01)
        vals = [x["value"] for x in r["records"] if x.get("value") is not None]
        total = sum(x["seconds"] for x in r["records"])
        reach_s = f"{reach[0]:.0f} | {reach[1]:.0f} | {reach[2]}" if reach else "not reached | - | -"
        near_s = f"{near[0]:.0f} | {near[2]}" if near else "not reached | -"
        lines.append(f"| {r['name']} | {len(r['records'])} | {r.get('pruned', '-')} | {reach_s} | {near_s} | "
                     f"{min(vals):.4f} | {total:.0f} | {r['wall']:.0f} |")
    over = [o for r in runs[1:] for o in r.get("overheads", []) if o]
    if over:
        sec = sum(o["seconds"] for o in over)
        share = sum(o["overhead"] for o in over) / sec
        startup = sum(o["startup_imports"] for o in over) / len(over)
        load = sum(o["load"] for o in over) / len(over)
        train = sum(o["train"] for o in over) / len(over)
        lines += ["", f"ftrun sweeper trials ({len(over)}): mean {sec / len(over):.1f} s per trial, of which "
                  f"training {train:.1f} s; overhead (process start, imports, data + model load, final eval and "
                  f"save) {100 * share:.0f}% of trial time (start-up and imports before the first log line "
                  f"{startup:.1f} s, tokenizer/data/model load {load:.1f} s)."]
        basic = runs[0]["records"]
        if len(basic) > 1:
            rest = sum(x["seconds"] for x in basic[1:]) / (len(basic) - 1)
            lines.append(f"Hydra basic sweeper jobs (in-process): first job {basic[0]['seconds']:.1f} s "
                         f"(includes imports), later jobs {rest:.1f} s each.")
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
