"""How much of the benchmark grids' ranking is the training seed: the exhaustive grids of bench/sweep_efficiency.py
trained again with other seeds, every configuration the same but ``seed``.

    python bench/seed_noise.py                           # both tasks, seeds 0 and 1 beside the recorded seed 42
    python bench/seed_noise.py --tasks letters --seeds 0

Issue 22 asks a sweep to come within 1% of the grid's best eval loss. The grid trains each configuration once, with
the default ``seed=42``, and a sweep's trials use that seed too, so a trial reproduces the grid's value exactly
(bench/sweep_replay.py relies on it). Whether "the grid's best" is a property of the configuration or of seed 42 is
what this measures: the same grids (same space, same trial overrides, warm workers, one thread per trial, two at a
time) with other seeds (``seed`` moves the adapter's initialization and the data order; the train and eval rows are
fixed, ``ftrun.data.builtin``), read back from each grid's Optuna study, against the recorded seed-42 grids under
``--grids`` (bench/sweep_efficiency.py's output directory).

Writes bench/results/seed_noise.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sweep_efficiency import BATCHES, TASKS, read_sweep, run_jobs, space_args  # noqa: E402

from ftrun.estimate.baseline import cpu_model  # noqa: E402

RECORDED_SEED = 42  # ftrun/conf/config.yaml's seed: the seed of the recorded grids and of every sweep's trials


def key(params: dict) -> str:
    """A configuration's name in seed_noise.json: ``lr=0.004 rank=16 batch_size=8`` (:func:`parse_key` reads it)."""
    return f"lr={params['lr']:g} rank={params['rank']} batch_size={params['batch_size']}"


def parse_key(config: str) -> tuple:
    """(lr, rank, batch_size) from :func:`key`'s name, as bench/sweep_replay.py keys its grids."""
    p = dict(kv.split("=") for kv in config.split())
    return float(p["lr"]), int(p["rank"]), int(p["batch_size"])


def grid_values(task_dir: Path, prefix: str) -> Dict[str, float]:
    """Configuration -> eval loss, from the grid sweeps ``<prefix><batch>`` under ``task_dir``."""
    out = {}
    for b in BATCHES:
        for r in read_sweep(task_dir, f"{prefix}{b}")["records"]:
            if r["value"] is not None:
                out[key({"batch_size": b, **r["params"]})] = r["value"]
    return out


def run_seed(task, task_dir: Path, seed: int) -> Dict[str, float]:
    """The task's grid trained with ``seed``; also written as a world bench/sweep_replay.py can replay samplers in
    (``<grids>_seed<S>/<task>/runs.json``, the shape of bench/sweep_efficiency.py's, eval curves included)."""
    jobs = [{"name": f"grid_seed{seed}_b{b}", "slots": 1, "out": task_dir,
             "args": [*space_args(b), "hydra.sweeper.sampler=grid", "hydra.sweeper.pruner=none", f"seed={seed}",
                      *task.trial(task_dir)]} for b in BATCHES]
    run_jobs(jobs)
    world = task_dir.parent.with_name(f"{task_dir.parent.name}_seed{seed}") / task.name
    world.mkdir(parents=True, exist_ok=True)
    (world / "runs.json").write_text(json.dumps({"label": task.label, "training_seed": seed,
                                                 "grid": [read_sweep(task_dir, j["name"]) for j in jobs]}))
    return grid_values(task_dir, f"grid_seed{seed}_b")


def spearman(a: List[float], b: List[float]) -> float:
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def analyse(values: Dict[int, Dict[str, float]]) -> dict:
    """Per seed: its best configuration and how many come within 1% of it; per configuration: the spread over seeds;
    the best by the mean over seeds; rank correlations between seeds."""
    seeds = sorted(values)
    configs = sorted(set.intersection(*(set(v) for v in values.values())))
    per_seed = {}
    for s in seeds:
        v = values[s]
        best = min(configs, key=lambda c: v[c])
        per_seed[s] = {"best": best, "best_value": v[best],
                       "within_1pct": sum(v[c] <= v[best] * 1.01 for c in configs),
                       "within_5pct": sum(v[c] <= v[best] * 1.05 for c in configs)}
    recorded_best = per_seed[RECORDED_SEED]["best"] if RECORDED_SEED in per_seed else None
    for s in seeds:  # where the recorded grid's best lands under each seed
        v = values[s]
        if recorded_best is not None:
            per_seed[s]["recorded_best_vs_best"] = v[recorded_best] / per_seed[s]["best_value"] - 1
            per_seed[s]["recorded_best_rank"] = 1 + sum(v[c] < v[recorded_best] for c in configs)
    spreads = {c: max(values[s][c] for s in seeds) / min(values[s][c] for s in seeds) - 1 for c in configs}
    means = {c: statistics.fmean(values[s][c] for s in seeds) for c in configs}
    best_mean = min(configs, key=means.get)
    pairs = {f"{a}-{b}": spearman([values[a][c] for c in configs], [values[b][c] for c in configs])
             for i, a in enumerate(seeds) for b in seeds[i + 1:]}
    top = sorted(configs, key=means.get)[:8]
    return {"seeds": seeds, "configs": len(configs), "per_seed": per_seed,
            "distinct_bests": len({p["best"] for p in per_seed.values()}),
            "median_spread": statistics.median(spreads.values()),
            "spread_over_1pct": sum(x > 0.01 for x in spreads.values()),
            "best_by_mean": best_mean, "best_mean": means[best_mean],
            "within_1pct_of_best_mean": sum(means[c] <= means[best_mean] * 1.01 for c in configs),
            "spearman": pairs,
            "top_by_mean": [{"config": c, "mean": means[c], "spread": spreads[c],
                             "values": {str(s): values[s][c] for s in seeds}} for c in top]}


def report(results: Dict[str, dict], meta: dict) -> str:
    lines = ["# Seed noise in the sweep benchmark's grids", "",
             f"Machine: {meta['machine']}. {meta['date']}. Command: `{meta['command']}`.", "",
             "Each task's 36-configuration grid of bench/sweep_efficiency.py (lr x rank x batch_size, the task's trial "
             "overrides unchanged), trained again with other training seeds (`seed=S`: the adapter's initialization "
             f"and the data order; the rows are fixed). Seed {RECORDED_SEED} is the recorded grid every sweep of "
             "bench/sweep_efficiency.py and bench/sweep_replay.py is judged against.", ""]
    for task, r in results.items():
        a = r["analysis"]
        lines += [f"## Task `{task}`", "",
                  "| seed | best configuration | its eval_loss | configurations within 1% of it | within 5% "
                  f"| seed {RECORDED_SEED}'s best, rank here | seed {RECORDED_SEED}'s best, above this seed's best |",
                  "|---|---|---|---|---|---|---|"]
        for s in a["seeds"]:
            p = a["per_seed"][str(s)] if str(s) in a["per_seed"] else a["per_seed"][s]
            lines.append(f"| {s} | {p['best']} | {p['best_value']:.4f} | {p['within_1pct']} | {p['within_5pct']} | "
                         f"{p.get('recorded_best_rank', '-')} | {100 * p.get('recorded_best_vs_best', 0):+.1f}% |")
        sp = ", ".join(f"{k}: {v:.2f}" for k, v in a["spearman"].items())
        lines += ["", f"- Different best configuration per seed: {a['distinct_bests']} distinct bests over "
                      f"{len(a['seeds'])} seeds.",
                  f"- A configuration's eval loss moves with the seed by a median of {100 * a['median_spread']:.1f}% "
                  f"(max over min, over the seeds); {a['spread_over_1pct']} of {a['configs']} configurations move "
                  "by more than 1%.",
                  f"- Rank correlation (Spearman) of the 36 configurations between seeds: {sp}.",
                  f"- Best by the mean over seeds: {a['best_by_mean']} ({a['best_mean']:.4f}); "
                  f"{a['within_1pct_of_best_mean']} configurations within 1% of that mean.", "",
                  "| configuration (best 8 by the mean) | mean | spread over seeds | " +
                  " | ".join(f"seed {s}" for s in a["seeds"]) + " |",
                  "|---|---|---|" + "---|" * len(a["seeds"])]
        for t in a["top_by_mean"]:
            lines.append(f"| {t['config']} | {t['mean']:.4f} | {100 * t['spread']:.1f}% | " +
                         " | ".join(f"{t['values'][str(s)]:.4f}" for s in a["seeds"]) + " |")
        lines.append("")
    lines += ["What it means for issue 22's bar (a sweep within 1% of the grid's best on a fifth of the grid's "
              f"compute, 3 of 3 sampler seeds; the grid's best judged on seed {RECORDED_SEED}):", ""]
    for task, r in results.items():
        a = r["analysis"]
        if a["distinct_bests"] > 1:
            lines.append(f"- `{task}`: the best configuration changes with the training seed, and the seed moves a "
                         f"configuration by a median {100 * a['median_spread']:.1f}%, more than the bar's 1%: which "
                         f"configuration is within 1% of the best is largely seed {RECORDED_SEED}'s draw, not "
                         "structure a sampler can learn (the ranking beyond the top agrees across seeds, Spearman "
                         f"{min(a['spearman'].values()):.2f} or more).")
        else:
            lines.append(f"- `{task}`: every seed has the same best configuration ({a['best_by_mean']}): the bar "
                         "asks a sampler for a configuration that is best under any seed.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="letters,instruct")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--grids", default=str(ROOT / "outputs" / "bench" / "se4"),
                   help="bench/sweep_efficiency.py's output directory: its seed-42 grids, and where these grids go")
    p.add_argument("--report", action="store_true", help="rewrite the Markdown from the committed JSON")
    args = p.parse_args()
    res_dir = ROOT / "bench" / "results"
    if args.report:
        saved = json.loads((res_dir / "seed_noise.json").read_text())
        (res_dir / "seed_noise.md").write_text(report(saved["tasks"], saved["meta"]))
        return
    grids, seeds = Path(args.grids), [int(s) for s in args.seeds.split(",")]
    results = {}
    for name in args.tasks.split(","):
        task, task_dir = TASKS[name], grids / name
        if not all((task_dir / f"grid_b{b}" / "done").is_file() for b in BATCHES):
            raise SystemExit(f"no recorded seed-{RECORDED_SEED} grid under {task_dir}: run "
                             f"`python bench/sweep_efficiency.py --configs tpe --seeds 0 --out-dir {grids}` first")
        task.prepare(task_dir)
        values = {RECORDED_SEED: grid_values(task_dir, "grid_b")}
        for s in seeds:
            print(f"{name}: grid with seed={s}", flush=True)
            values[s] = run_seed(task, task_dir, s)
        results[name] = {"values": {str(s): v for s, v in values.items()}, "analysis": analyse(values)}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}",
            "command": "python bench/seed_noise.py " + " ".join(sys.argv[1:])}
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "seed_noise.json").write_text(json.dumps({"meta": meta, "tasks": results}, indent=1))
    (res_dir / "seed_noise.md").write_text(report(results, meta))
    print((res_dir / "seed_noise.md").read_text())


if __name__ == "__main__":
    main()
