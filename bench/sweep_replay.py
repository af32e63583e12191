"""Samplers replayed on the recorded exhaustive grids of bench/sweep_efficiency.py, at no training cost.

    python bench/sweep_replay.py                                  # the candidates below, 50 seeds, both tasks
    python bench/sweep_replay.py --seeds 100 --publish            # and write bench/results/sweep_replay.{json,md}

A trial is seeded, so a configuration trains to the same eval loss every time (the sweeper itself answers a repeated
configuration from the study for that reason, sweeper.quota): for a sweep WITHOUT pruning, what a sampler finds on a
budget follows from the order in which it proposes configurations. This replays that order: the sampler, built as
the sweeper builds it (sweeper.study.build_sampler), proposes through the sweeper's own space
(sweeper.space.sweep_space, the bench's command-line space), each configuration is told the grid's eval loss and
charged the grid's trial-seconds for it (as measured, under that run's machine load), a repeat is told the known
value and charged nothing (as the sweeper does), and the sweep stops starting trials once the budget
(``--budget-share`` of the grid's trial-seconds) is spent. Per sampler and task: in how many seeds a trial within 1%
of the grid's best finished within the budget, and the median trial-seconds until the first such trial.

What it cannot replay: pruning and pause-and-promote (their trials stop at rungs whose values the grid did not
record), timing noise (each configuration costs what it cost once), and parallel slots. Those stay with
bench/sweep_efficiency.py's real sweeps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sweep_efficiency import space_args  # noqa: E402  (the bench's own space)

CANDIDATES = {  # label: hydra.sweeper.sampler spec
    "TPE, 4 start-up (sweep=auto before 2026-12-04)": {"name": "tpe", "n_startup_trials": 4},
    "TPE, 10 start-up (Optuna's default)": {"name": "tpe"},
    "TPE, 2 start-up": {"name": "tpe", "n_startup_trials": 2},
    "GP (Optuna's GPSampler), 4 start-up (sweep=auto)": {"name": "gp", "n_startup_trials": 4},
    "GP, 4 start-up, deterministic objective": {"name": "gp", "n_startup_trials": 4, "deterministic_objective": True},
    "GP, 2 start-up, deterministic objective": {"name": "gp", "n_startup_trials": 2, "deterministic_objective": True},
    "GP, 6 start-up, deterministic objective": {"name": "gp", "n_startup_trials": 6, "deterministic_objective": True},
    "random": {"name": "random"},
}


def grid_of(task: dict) -> Dict[Tuple, Tuple[float, float]]:
    """(lr, rank, batch_size) -> (eval_loss, trial-seconds) of the recorded exhaustive grid."""
    out = {}
    for sweep in task["grid"]:
        for r in sweep["records"]:
            if r["state"] == "COMPLETE":
                p = r["params"]
                out[(p["lr"], p["rank"], p["batch_size"])] = (r["value"], r["seconds"])
    return out


def replay(spec: dict, seed: int, grid: Dict[Tuple, Tuple[float, float]], budget: float,
           best: float) -> Dict[str, Optional[float]]:
    """One sweep, run until a trial comes within 1% of ``best`` (or the grid is exhausted): the trial-seconds used
    when it finished (``reached_s``), whether it started within ``budget`` (the sweep starts no trial once the
    budget is spent; a started trial finishes), and the best value among the trials the budget allowed."""
    import optuna

    from sweeper.space import sweep_space
    from sweeper.study import build_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = sweep_space({}, space_args())
    study = optuna.create_study(sampler=build_sampler(spec, seed=seed), direction="minimize")
    seen: Dict[Tuple, float] = {}
    used, asks = 0.0, 0
    best_in_budget = None
    while len(seen) < len(grid) and asks < 5000:
        asks += 1
        trial = study.ask()
        params = space.sample(trial, {})
        key = (float(params["lr"]), int(params["rank"]), int(params["batch_size"]))
        value, seconds = grid[key]
        study.tell(trial, value)
        if key in seen:  # answered from the study: no compute
            continue
        seen[key] = value
        within = used < budget
        used += seconds
        if within:
            best_in_budget = value if best_in_budget is None else min(best_in_budget, value)
        if value <= best * 1.01:
            return {"reached_s": used, "trials": len(seen), "within_budget": within, "best_in_budget": best_in_budget}
    return {"reached_s": None, "trials": len(seen), "within_budget": False, "best_in_budget": best_in_budget}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "bench/results/sweep_efficiency.json"),
                    help="the sweep-efficiency results whose grids to replay")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--budget-share", type=float, default=0.2)
    ap.add_argument("--only", help="candidate labels' prefixes, separated by ';'")
    ap.add_argument("--publish", action="store_true", help="write bench/results/sweep_replay.{json,md}")
    args = ap.parse_args()
    data = json.loads(Path(args.results).read_text())
    candidates = {k: v for k, v in CANDIDATES.items()
                  if not args.only or any(k.startswith(p) for p in args.only.split(";"))}
    rows: List[dict] = []
    for task_name, task in data["tasks"].items():
        grid = grid_of(task)
        best = min(v for v, _ in grid.values())
        total = sum(s for _, s in grid.values())
        budget = args.budget_share * total
        for label, spec in candidates.items():
            runs = [replay(spec, seed, grid, budget, best) for seed in range(args.seeds)]
            hits = sum(r["within_budget"] for r in runs)
            first3 = sum(r["within_budget"] for r in runs[:3])
            to_reach = [r["reached_s"] for r in runs if r["reached_s"] is not None]
            regret = statistics.median(100 * (r["best_in_budget"] / best - 1) for r in runs)
            row = {"task": task_name, "sampler": label, "spec": spec, "seeds": args.seeds, "reached": hits,
                   "seeds_0_1_2": first3, "median_reached_s": statistics.median(to_reach),
                   "median_regret_pct": regret, "budget_s": budget, "grid_s": total, "runs": runs}
            rows.append(row)
            print(f"{task_name:9s} {label:42s} within 1% on the budget: {hits:3d}/{args.seeds} (seeds 0-2: {first3}/3)"
                  f"; median trial-s to within 1%: {row['median_reached_s']:.0f} ({row['median_reached_s'] / total:.2f}"
                  f" of the grid); median regret on the budget {regret:.1f}%", flush=True)
    if args.publish:
        out = ROOT / "bench/results"
        meta = {"machine": f"{platform.node()}, replay (no training): the grids as recorded in {args.results}",
                "budget_share": args.budget_share, "seeds": args.seeds,
                "grids": data.get("meta", {}).get("machine")}
        (out / "sweep_replay.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        lines = ["# Samplers replayed on the recorded grids", "",
                 f"Replay of `bench/results/sweep_efficiency.json`'s exhaustive grids (recorded on: {meta['grids']}); "
                 f"no training here. Command: `python bench/sweep_replay.py --seeds {args.seeds} --publish`. "
                 f"Budget: {args.budget_share} of each grid's trial-seconds. Sampler seeds 0..{args.seeds - 1}; "
                 "a seed counts when a trial within 1% of the grid's best started before the budget was spent "
                 "(the sweeper starts no trial after that; a started one finishes). Median trial-s to within 1%: each "
                 "sweep run on, past the budget, until it gets there (the median over seeds; the grid's own order "
                 "would need half the grid on average). Regret: how far the best trial on the budget ended above the "
                 "grid's best (median over seeds). See the script's docstring for what a replay cannot show "
                 "(pruning, timing noise, parallel slots).",
                 "", "| task | sampler | within 1% on the budget (all seeds) | seeds 0-2 | median trial-s to within 1% "
                 "| share of the grid's | median regret on the budget |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            med = r["median_reached_s"]
            lines.append(f"| {r['task']} | {r['sampler']} | {r['reached']}/{r['seeds']} | {r['seeds_0_1_2']}/3 | "
                         f"{med:.0f} | {med / r['grid_s']:.2f} | {r['median_regret_pct']:.1f}% |")
        (out / "sweep_replay.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
