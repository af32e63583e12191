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

Pruners too, where the grid recorded each trial's eval loss at every evaluation (``curve``, written by
bench/sweep_efficiency.py since 2026-12-04): a trial stopped at a rung trained exactly as the grid's trial did up to
there (the same cosine schedule, the same seed), so it reports the curve's values as the sweeper does (at the
examples seen, rounded to ``train.eval_examples``; the last evaluation decides nothing) and, pruned, is charged its
grid trial-seconds times the share of its steps it trained. Pause and promote (``pruner=promotion`` on the cosine
schedule) too: a promoted trial resumes its own schedule, so it goes on along its grid curve (:func:`replay_promotion`).
What it cannot replay: decay branches (their values are not in a cosine grid), timing noise (each configuration
costs what it cost once), and parallel slots. Those stay with bench/sweep_efficiency.py's real sweeps.
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

CANDIDATES = {  # label: (hydra.sweeper.sampler spec, a PRUNERS key or None)
    "TPE, 4 start-up, no pruning (sweep=auto until 2026-12-04)": ({"name": "tpe", "n_startup_trials": 4}, None),
    "TPE, 10 start-up (Optuna's default)": ({"name": "tpe"}, None),
    "TPE, 2 start-up": ({"name": "tpe", "n_startup_trials": 2}, None),
    "GP (Optuna's GPSampler), 4 start-up": ({"name": "gp", "n_startup_trials": 4}, None),
    "GP, 4 start-up, deterministic objective": ({"name": "gp", "n_startup_trials": 4, "deterministic_objective": True},
                                                None),
    "GP, 2 start-up, deterministic objective": ({"name": "gp", "n_startup_trials": 2, "deterministic_objective": True},
                                                None),
    "GP, 6 start-up, deterministic objective": ({"name": "gp", "n_startup_trials": 6, "deterministic_objective": True},
                                                None),
    "random": ({"name": "random"}, None),
    "TPE, 4 start-up + median pruning from the 5th trial": ({"name": "tpe", "n_startup_trials": 4}, "median"),
    "TPE, 4 start-up + Hyperband": ({"name": "tpe", "n_startup_trials": 4}, "Hyperband"),
    "TPE, 4 start-up + successive halving": ({"name": "tpe", "n_startup_trials": 4}, "successive halving"),
    "TPE, 4 start-up + successive halving, auto min resource": ({"name": "tpe", "n_startup_trials": 4},
                                                                "successive halving, auto"),
    "TPE, 4 start-up + median pruning, Optuna's defaults (sweep=auto)": ({"name": "tpe", "n_startup_trials": 4},
                                                                         "median, Optuna's defaults"),
    "random + Hyperband": ({"name": "random"}, "Hyperband"),
    "TPE, 2 start-up + successive halving, factor 2, from the first evaluation": (
        {"name": "tpe", "n_startup_trials": 2}, "successive halving, factor 2, from the first evaluation"),
    "TPE, 2 start-up + successive halving, factor 2": ({"name": "tpe", "n_startup_trials": 2},
                                                       "successive halving, factor 2"),
    "TPE, 3 start-up + successive halving, factor 2": ({"name": "tpe", "n_startup_trials": 3},
                                                       "successive halving, factor 2"),
    "TPE, 2 start-up + median pruning from the 3rd trial": ({"name": "tpe", "n_startup_trials": 2},
                                                            "median, from the 3rd trial"),
    "TPE, 4 start-up + pause and promote": ({"name": "tpe", "n_startup_trials": 4}, "promotion"),
    "TPE, 4 start-up + pause and promote, factor 2": ({"name": "tpe", "n_startup_trials": 4}, "promotion, factor 2"),
    # no GP with a pruner: Optuna's GP sampler learns only from complete trials and proposed one pruned
    # configuration ~5,000 times in 8 of 28 instruct seeds (the sweeper refuses the pair, sweeper.setting_checks)
}


EVAL_EXAMPLES = {"letters": 375, "instruct": 250}  # train.eval_examples of bench/sweep_efficiency.py's tasks
PRUNERS = {  # label: hydra.sweeper.pruner spec (min_resource: one evaluation's examples)
    "median": lambda every: {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 0},
    "Hyperband": lambda every: {"name": "hyperband", "min_resource": every, "reduction_factor": 3},
    "successive halving": lambda every: {"name": "successive_halving", "min_resource": every, "reduction_factor": 3},
    # min_resource auto: the first complete trial's examples / 100 (Optuna's heuristic), so any eval cadence fits
    "successive halving, auto": lambda every: {"name": "successive_halving", "reduction_factor": 3},
    "successive halving, factor 2": lambda every: {"name": "successive_halving", "min_resource": every,
                                                   "reduction_factor": 2},
    # sweep=auto's: the first rung at the study's first evaluation, whatever its cadence (sweeper.halving)
    "successive halving, factor 2, from the first evaluation": lambda every: {
        "name": "successive_halving", "min_resource": "first_evaluation", "reduction_factor": 2},
    "median, from the 3rd trial": lambda every: {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    # pause and promote (sweeper.promotion): a paused trial resumed later follows its grid curve on (no branches)
    "promotion": lambda every: {"name": "promotion", "min_resource": every, "reduction_factor": 3},
    "promotion, factor 2": lambda every: {"name": "promotion", "min_resource": every, "reduction_factor": 2},
    "median, Optuna's defaults": lambda every: {"name": "median"},
}


def grid_of(task: dict) -> Dict[Tuple, dict]:
    """(lr, rank, batch_size) -> the recorded grid trial: ``value`` (eval_loss), ``seconds``, and where recorded
    ``curve`` ([step, eval_loss] at every evaluation) and ``steps``."""
    out = {}
    for sweep in task["grid"]:
        for r in sweep["records"]:
            if r["state"] == "COMPLETE":
                p = r["params"]  # (a grid sweep of runs.json fixes the batch size: grid_b8, grid_b16)
                batch = p["batch_size"] if "batch_size" in p else int(sweep["name"].rsplit("_b", 1)[1])
                out[(p["lr"], p["rank"], batch)] = {"value": r["value"], "seconds": r["seconds"],
                                                             "curve": r.get("curve"), "steps": r.get("global_step")}
    return out


class Tally:
    """A replayed sweep's account: trial-seconds used, trials trained and stopped, the best value on the budget."""

    def __init__(self) -> None:
        self.used, self.trained, self.pruned = 0.0, 0, 0
        self.best_in_budget: Optional[float] = None
        self.best_key: Optional[Tuple] = None  # the configuration of best_in_budget: the one the sweep reports

    def finished(self, value: float, within: bool, best: float, key: Tuple) -> bool:
        """A trial of ``key`` completed with ``value`` (with the budget not yet spent: ``within``); whether it is within 1%
        of ``best`` (never, for ``best`` = -inf: the sweep then spends its whole budget)."""
        if within and (self.best_in_budget is None or value < self.best_in_budget):
            self.best_in_budget, self.best_key = value, key
        return value <= best * 1.01

    def outcome(self, reached: bool, within: bool) -> Dict[str, Optional[float]]:
        return {"reached_s": self.used if reached else None, "trials": self.trained, "pruned": self.pruned,
                "within_budget": within, "best_in_budget": self.best_in_budget,
                "best_key": list(self.best_key) if self.best_key else None}


def examples_seen(step: int, batch_size: int, every: int) -> int:
    """The step an evaluation is reported under, as sweeper.trial.examples_seen computes it."""
    seen = step * batch_size
    return max(every, round(seen / every) * every) if every > 0 else seen


def replay(spec: dict, seed: int, grid: Dict[Tuple, dict], budget: float, best: float,
           pruner: Optional[dict] = None, every: int = 0, budget_only: bool = False) -> Dict[str, Optional[float]]:
    """One sweep, run until a trial completes within 1% of ``best`` (or every configuration completed): the
    trial-seconds used when it finished (``reached_s``), whether it finished within ``budget`` (the sweep starts no
    trial once the budget is spent; a started trial finishes), and the best value among the trials the budget
    allowed. ``pruner``: a hydra.sweeper.pruner spec, asked after each of a trial's evaluations but its last."""
    import optuna

    from sweeper.space import sweep_space
    from sweeper.study import build_pruner, build_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if pruner is not None and pruner.get("name") == "promotion":
        return replay_promotion(spec, seed, grid, budget, best, pruner, every, budget_only)
    space = sweep_space({}, space_args())
    # a fixed name: Hyperband assigns trials to brackets by hashing the study's name with the trial number
    study = optuna.create_study(study_name=f"replay-{seed}", sampler=build_sampler(spec, seed=seed),
                                direction="minimize", pruner=build_pruner(pruner or "none"))
    complete: Dict[Tuple, float] = {}
    tally, asks = Tally(), 0
    while len(complete) < len(grid) and asks < 5000 and not (budget_only and tally.used >= budget):
        asks += 1
        trial = study.ask()
        params = space.sample(trial, {})
        key = (float(params["lr"]), int(params["rank"]), int(params["batch_size"]))
        rec = grid[key]
        if key in complete:  # answered from the study: no compute
            study.tell(trial, complete[key])
            continue
        tally.trained += 1
        stopped_at = None
        if pruner is not None:
            for step, loss in rec["curve"]:
                if step >= rec["steps"]:
                    break
                trial.report(loss, examples_seen(step, key[2], every))
                if trial.should_prune():
                    stopped_at = step
                    break
        if stopped_at is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            tally.used += rec["seconds"] * stopped_at / rec["steps"]
            tally.pruned += 1
            continue
        study.tell(trial, rec["value"])
        complete[key] = rec["value"]
        tally.used += rec["seconds"]
        on_budget = tally.used <= budget  # the trial finished within the budget
        if tally.finished(rec["value"], on_budget, best, key):
            return tally.outcome(reached=True, within=on_budget)
    return tally.outcome(reached=False, within=False)


def replay_promotion(spec: dict, seed: int, grid: Dict[Tuple, dict], budget: float, best: float, pruner: dict,
                     every: int, budget_only: bool = False) -> Dict[str, Optional[float]]:
    """:func:`replay` under pause and promote (sweeper.promotion, one slot): when the slot frees, the rule's next
    promotion resumes where it paused (the same cosine schedule, so on along its grid curve) before any new trial
    starts; a trial pauses at a rung where it is not among the best ``1/reduction_factor``. Neither a new trial
    nor a promotion starts once the budget is spent. A paused trial is charged the share of its grid
    trial-seconds it trained, and its resumption the rest up to its next pause or end."""
    import optuna

    from ftrun.contract import ATTR_PAUSED_AT
    from sweeper.space import sweep_space
    from sweeper.study import build_pruner, build_sampler

    space = sweep_space({}, space_args())
    rule = build_pruner(pruner)
    study = optuna.create_study(study_name=f"replay-{seed}", sampler=build_sampler(spec, seed=seed),
                                direction="minimize", pruner=rule)
    complete: Dict[Tuple, float] = {}
    paused: Dict[int, Tuple[optuna.trial.Trial, Tuple, int]] = {}  # number -> (trial, key, curve index to go on)
    tally, asks = Tally(), 0
    while len(complete) < len(grid) and asks < 5000 and not (budget_only and tally.used >= budget):
        frozen = rule.next_promotion(study)
        if frozen is not None:
            trial, key, start = paused.pop(frozen.number)
            trial.set_user_attr(ATTR_PAUSED_AT, None)
        else:
            asks += 1
            trial = study.ask()
            params = space.sample(trial, {})
            key = (float(params["lr"]), int(params["rank"]), int(params["batch_size"]))
            if key in complete:  # answered from the study: no compute
                study.tell(trial, complete[key])
                continue
            tally.trained += 1
            start = 0
        rec = grid[key]
        done_before = rec["curve"][start - 1][0] if start else 0
        stopped_at = None
        for i in range(start, len(rec["curve"])):
            step, loss = rec["curve"][i]
            if step >= rec["steps"]:
                break
            trial.report(loss, examples_seen(step, key[2], every))
            if trial.should_prune():
                stopped_at = step
                trial.set_user_attr(ATTR_PAUSED_AT, examples_seen(step, key[2], every))
                paused[trial.number] = (trial, key, i + 1)
                break
        if stopped_at is not None:
            tally.used += rec["seconds"] * (stopped_at - done_before) / rec["steps"]
            tally.pruned += 1
            continue
        study.tell(trial, rec["value"])
        complete[key] = rec["value"]
        tally.used += rec["seconds"] * (rec["steps"] - done_before) / rec["steps"]
        on_budget = tally.used <= budget  # the trial finished within the budget
        if tally.finished(rec["value"], on_budget, best, key):
            return tally.outcome(reached=True, within=on_budget)
    return tally.outcome(reached=False, within=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "bench/results/sweep_efficiency.json"),
                    help="the sweep-efficiency results whose grids to replay")
    ap.add_argument("--runs", metavar="DIR", help="instead: a bench/sweep_efficiency.py run directory (its "
                    "<task>/runs.json), e.g. one made with --grid-only")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=0, help="sampler seeds from this one on (a held-out set)")
    ap.add_argument("--budget-share", type=float, default=0.2)
    ap.add_argument("--budget-only", action="store_true", help="stop each replayed sweep when its budget is spent "
                    "(fast; no median trial-s past the budget)")
    ap.add_argument("--only", help="candidate labels' prefixes, separated by ';'")
    ap.add_argument("--publish", action="store_true", help="write bench/results/<--name>.{json,md}")
    ap.add_argument("--name", default="sweep_replay", help="the published files' name")
    ap.add_argument("--judge-mean", metavar="JSON", help="bench/results/seed_noise.json: judge the configuration "
                    "each sweep reports (its best trial on the budget, the whole budget spent) by its mean eval loss "
                    "over the training seeds there, against the best mean")
    args = ap.parse_args()
    if args.runs:
        source = args.runs
        tasks = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(args.runs).glob("*/runs.json"))}
        grids_machine = f"the grids of {args.runs}"
    else:
        source = args.results
        if Path(source).resolve().is_relative_to(ROOT):
            source = str(Path(source).resolve().relative_to(ROOT))
        data = json.loads(Path(args.results).read_text())
        tasks, grids_machine = data["tasks"], data.get("meta", {}).get("machine")
    candidates = {k: v for k, v in CANDIDATES.items()
                  if not args.only or any(k.startswith(p) for p in args.only.split(";"))}
    if args.judge_mean:
        return judge_by_mean(tasks, candidates, json.loads(Path(args.judge_mean).read_text()), args)
    rows: List[dict] = []
    for task_name, task in tasks.items():
        grid = grid_of(task)
        best = min(r["value"] for r in grid.values())
        total = sum(r["seconds"] for r in grid.values())
        budget = args.budget_share * total
        curves = all(r["curve"] and r["steps"] for r in grid.values())
        for label, (spec, pruner) in candidates.items():
            if pruner is not None and not curves:
                print(f"{task_name:9s} {label:42s} skipped: the grid has no eval curves", flush=True)
                continue
            every = EVAL_EXAMPLES[task_name]
            runs = [replay(spec, seed, grid, budget, best, None if pruner is None else PRUNERS[pruner](every), every,
                           args.budget_only)
                    for seed in range(args.first_seed, args.first_seed + args.seeds)]
            hits = sum(r["within_budget"] for r in runs)
            first3 = sum(r["within_budget"] for r in runs[:3])
            to_reach = [r["reached_s"] for r in runs if r["reached_s"] is not None]
            regret = statistics.median(100 * (r["best_in_budget"] / best - 1) for r in runs
                                       if r["best_in_budget"] is not None)
            row = {"task": task_name, "sampler": label, "spec": spec,
                   "pruner": None if pruner is None else PRUNERS[pruner](every), "seeds": args.seeds,
                   "reached": hits, "seeds_0_1_2": first3,
                   "median_reached_s": statistics.median(to_reach) if to_reach and not args.budget_only else None,
                   "median_regret_pct": regret, "budget_s": budget, "grid_s": total, "runs": runs}
            rows.append(row)
            med = row["median_reached_s"]
            print(f"{task_name:9s} {label:42s} within 1% on the budget: {hits:3d}/{args.seeds} (seeds 0-2: {first3}/3)"
                  f"; median trial-s to within 1%: {'-' if med is None else f'{med:.0f} ({med / total:.2f} of the grid)'}"
                  f"; median regret on the budget {regret:.1f}%", flush=True)
    if args.publish:
        out = ROOT / "bench/results"
        meta = {"machine": f"{platform.node()}, replay (no training): the grids as recorded in {source}",
                "budget_share": args.budget_share, "seeds": args.seeds, "grids": grids_machine}
        (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        lines = ["# Samplers replayed on the recorded grids", "",
                 f"Replay of `{source}`'s exhaustive grids (recorded on: {meta['grids']}); no training here. "
                 f"Command: `python bench/sweep_replay.py {'--runs ' + source + ' ' if args.runs else ''}"
                 f"--seeds {args.seeds}{' --budget-only' if args.budget_only else ''}"
                 f"{'' if args.name == 'sweep_replay' else ' --name ' + args.name} --publish`. "
                 f"Budget: {args.budget_share} of each grid's trial-seconds. Sampler seeds 0..{args.seeds - 1}; "
                 "a seed counts when a trial within 1% of the grid's best finished within the budget (as "
                 "bench/sweep_efficiency.py counts a real sweep; until 2026-12-04 20:55 UTC a trial that started on "
                 "the budget counted). Median trial-s to within 1%: each "
                 "sweep run on, past the budget, until it gets there (the median over seeds; the grid's own order "
                 "would need half the grid on average; not with --budget-only). Regret: how far the best trial on the budget ended above the "
                 "grid's best (median over seeds). See the script's docstring for what a replay cannot show "
                 "(decay branches, timing noise, parallel slots).",
                 "", "| task | sampler | within 1% on the budget (all seeds) | seeds 0-2 | median trial-s to within 1% "
                 "| share of the grid's | median regret on the budget |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            med = r["median_reached_s"]
            lines.append(f"| {r['task']} | {r['sampler']} | {r['reached']}/{r['seeds']} | {r['seeds_0_1_2']}/3 | "
                         f"{'-' if med is None else round(med)} | {'-' if med is None else round(med / r['grid_s'], 2)} | "
                         f"{r['median_regret_pct']:.1f}% |")
        (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


def seed_means(seed_noise: dict, task: str) -> Dict[Tuple, float]:
    """(lr, rank, batch_size) -> the mean eval loss over bench/seed_noise.py's training seeds."""
    from seed_noise import parse_key

    values = seed_noise["tasks"][task]["values"]
    return {parse_key(config): statistics.fmean(v[config] for v in values.values())
            for config in set.intersection(*(set(v) for v in values.values()))}


def judge_by_mean(tasks: dict, candidates: dict, seed_noise: dict, args) -> int:
    """Each replayed sweep spends its whole budget on the recorded grid (one training seed, as a sweep trains) and
    reports its best trial; that configuration is judged by its mean over the training seeds of ``seed_noise``."""
    rows = []
    for task_name, task in tasks.items():
        if task_name not in seed_noise["tasks"]:
            continue
        grid, means = grid_of(task), seed_means(seed_noise, task_name)
        best_mean = min(means.values())
        budget = args.budget_share * sum(r["seconds"] for r in grid.values())
        curves = all(r["curve"] and r["steps"] for r in grid.values())
        every = EVAL_EXAMPLES[task_name]
        for label, (spec, pruner) in candidates.items():
            if pruner is not None and not curves:
                continue
            runs = [replay(spec, seed, grid, budget, float("-inf"),
                           None if pruner is None else PRUNERS[pruner](every), every, budget_only=True)
                    for seed in range(args.first_seed, args.first_seed + args.seeds)]
            gaps = [100 * (means[tuple(r["best_key"])] / best_mean - 1) for r in runs if r["best_key"]]
            ok = sum(g <= 1.0 for g in gaps)
            rows.append({"task": task_name, "sampler": label, "seeds": args.seeds, "picked_within_1pct": ok,
                         "seeds_0_1_2": sum(g <= 1.0 for g in gaps[:3]), "median_gap_pct": statistics.median(gaps),
                         "training_seeds": seed_noise["tasks"][task_name]["analysis"]["seeds"]})
            print(f"{task_name:9s} {label:60s} picked within 1% of the best mean: {ok:3d}/{args.seeds}; "
                  f"median gap {statistics.median(gaps):.1f}%", flush=True)
    if args.publish:
        out = ROOT / "bench/results"
        (out / f"{args.name}.json").write_text(json.dumps({"budget_share": args.budget_share, "rows": rows}, indent=1))
        seeds = ", ".join(map(str, rows[0]["training_seeds"])) if rows else ""
        lines = ["# Samplers replayed, judged by the mean over training seeds", "",
                 f"Command: `python bench/sweep_replay.py --seeds {args.seeds} --judge-mean {args.judge_mean} "
                 f"--name {args.name} --publish`. Each sweep is replayed on the recorded grid (one training seed, as "
                 f"a sweep's trials train) and spends its whole budget ({args.budget_share} of the grid's "
                 "trial-seconds); the configuration it reports (its best trial) is judged by its mean eval loss over "
                 f"the training seeds {seeds} of bench/seed_noise.py, against the best mean of the grid.", "",
                 "| task | sampler | reported configuration within 1% of the best mean | seeds 0-2 | median gap |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['sampler']} | {r['picked_within_1pct']}/{r['seeds']} | {r['seeds_0_1_2']}/3 | "
                  f"{r['median_gap_pct']:.1f}% |" for r in rows]
        (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
