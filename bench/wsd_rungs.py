"""Do warmup-stable-decay rung branches rank configurations as their end does, and what would pause and promote
gain from a sampler that learns from them? (issue 22)

    python bench/wsd_rungs.py --record --grids outputs/bench/se4     # train both WSD grids (~13 min on 2 cores)
    python bench/wsd_rungs.py --seeds 30 --publish                   # replay them; bench/results/wsd_rungs.{json,md}
    # the decay shape scheduler=wsd ships (1-sqrt), recorded apart; bench/results/wsd_rungs_1sqrt.{json,md}:
    python bench/wsd_rungs.py --record --out outputs/bench/wsd_rungs_1sqrt --decay-type 1-sqrt --seeds 0
    python bench/wsd_rungs.py --out outputs/bench/wsd_rungs_1sqrt --decay-type 1-sqrt --seeds 30 --publish \
        --name wsd_rungs_1sqrt

``--record`` trains bench/sweep_efficiency.py's 36-point grid on both tasks again, each trial under
``scheduler=wsd`` with a decay branch (``hydra.sweeper.rung_branch=0.15``) at every evaluation and a pruner that
stops nothing, so that every trial records what it would report at any rung (its Optuna intermediate values) and
how it ends. A branch leaves the trial's weights unchanged (tests/sweeper/test_rung_branch.py), so one trial gives
every rung's score. The instruct task starts from the stage=pt base already in ``--grids`` (a run directory of
bench/sweep_efficiency.py, whose cosine grids are the reference).

The replay (no training) then reports, per task: where the configurations that end best rank at each rung; and in
how many sampler seeds a sweep on a fifth of the cosine grid's trial-seconds finishes a trial within 1% of the
cosine grid's best, and of the WSD grid's own best: plain TPE / GP on WSD trials, pause and promote
(sweeper.promotion, as the sweeper runs it) with TPE learning only from finished trials (``teach_sampler=0``)
and with TPE reading the paused trials' rung values (``teach_sampler=4``, :mod:`sweeper.rung_view`: BOHB's rule).
Optuna's TPE and GP learn only from COMPLETE (and, TPE, PRUNED) trials; a paused trial is RUNNING, so without the
view the sampler learns under pause and promote from the few trials that finished. Costs: a trial's recorded
seconds less its branches, spread evenly over its evaluations, plus the branch at each rung it reports (branch
seconds in proportion to the steps before them) and 0.3 s per pause or resume.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sweep_efficiency as se  # noqa: E402
from sweep_replay import grid_of, replay  # noqa: E402

OUT = ROOT / "outputs" / "bench" / "wsd_rungs"
BRANCH_SHARE = 0.15
OVERHEAD_S = 0.3  # a pause's checkpoint or a promotion's resume


def record(grids: Path, out: Path, decay_type: str) -> None:
    """Train both tasks' WSD grids (two one-slot sweeps at a time, one core each) into ``out``."""
    jobs = []
    for name in ("letters", "instruct"):
        task, d = se.TASKS[name], out / name
        d.mkdir(parents=True, exist_ok=True)
        for b in se.BATCHES:
            jobs.append({"name": f"grid_wsd_b{b}", "slots": 1, "out": d,
                         "args": [*se.space_args(b), "hydra.sweeper.sampler=grid",
                                  "hydra.sweeper.pruner={name:threshold,upper:1000000.0}", "scheduler=wsd",
                                  f"scheduler.kwargs.decay_type={decay_type}", f"hydra.sweeper.rung_branch={BRANCH_SHARE}",
                                  *task.trial(grids / name)]})
    se.run_jobs(jobs)


def read_wsd(task: str, where: Path = OUT) -> Dict[Tuple, dict]:
    """(lr, rank, batch_size) -> value, seconds, branch_s and ``branches`` {examples seen: reported value}."""
    import optuna

    from ftrun.contract import ATTR_BRANCH_S

    out = {}
    for b in se.BATCHES:
        study = se.load_study(where / task, f"grid_wsd_b{b}")
        for t in study.get_trials(deepcopy=False):
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            out[(float(t.params["lr"]), int(t.params["rank"]), b)] = {
                "value": t.value, "seconds": float(t.user_attrs["duration_s"]),
                "branch_s": float(t.user_attrs.get(ATTR_BRANCH_S, 0.0)),
                "branches": {int(k): v for k, v in sorted(t.intermediate_values.items())}}
    return out


def main_seconds(rec: dict) -> float:
    return rec["seconds"] - rec["branch_s"]


def branch_cost(rec: dict) -> Dict[int, float]:
    """Each branch's seconds, in proportion to the steps trained before it (its length is a share of them)."""
    at = sorted(rec["branches"])[:-1]  # the last report is the run's own end, not a branch
    weight = sum(range(1, len(at) + 1)) or 1
    return {s: rec["branch_s"] * (i + 1) / weight for i, s in enumerate(at)}


def replay_plain(spec: dict, seed: int, grid: dict, budget: float, target: float) -> Tuple[bool, float]:
    """A sweep without pruning on WSD trials, each charged its seconds less its branches (a sweep without a pruner
    runs none): bench/sweep_replay.py's replay. (finished within 1% on the budget, trial-s used: the budget for a miss)"""
    plain = {k: {"value": r["value"], "seconds": main_seconds(r), "curve": None, "steps": None}
             for k, r in grid.items()}
    out = replay(spec, seed, plain, budget, target, budget_only=True)
    return out["within_budget"], out["reached_s"] or budget


def replay_promotion(spec: dict, seed: int, grid: dict, budget: float, target: float, every: int,
                     view: int = 0, reduction_factor: int = 3) -> Tuple[bool, float]:
    """Pause and promote (one slot) with a branch at each rung: a promotion resumes before any new trial starts;
    a configuration proposed while a trial of it waits paused is asked again (sweeper.quota.answer_repeat)."""
    import optuna

    from ftrun.contract import ATTR_PAUSED_AT
    from sweeper.promotion import PromotionPruner
    from sweeper.space import sweep_space
    from sweeper.study import build_sampler

    space = sweep_space({}, se.space_args())
    rule = PromotionPruner(min_resource=every, reduction_factor=reduction_factor, teach_sampler=view)
    sampler = rule.taught(build_sampler(spec, seed=seed))
    study = optuna.create_study(study_name=f"replay-{seed}", sampler=sampler, direction="minimize", pruner=rule)
    complete: Dict[Tuple, float] = {}
    paused: Dict[int, tuple] = {}  # number -> (trial, key, index of the next report)
    used = 0.0
    for _ in range(3000):
        if len(complete) == len(grid):
            break
        frozen = rule.next_promotion(study)
        if frozen is not None:
            trial, key, start = paused.pop(frozen.number)
            trial.set_user_attr(ATTR_PAUSED_AT, None)
            used += OVERHEAD_S
        else:
            if used >= budget:
                break
            trial = study.ask()
            p = space.sample(trial, {})
            key = (float(p["lr"]), int(p["rank"]), int(p["batch_size"]))
            if key in complete:
                study.tell(trial, complete[key])
                continue
            if any(k == key for _, k, _ in paused.values()):
                trial.set_user_attr("duplicate_of", -1)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            start = 0
        rec = grid[key]
        reports, costs = sorted(rec["branches"])[:-1], branch_cost(rec)
        per_eval = main_seconds(rec) / (len(reports) + 1)
        stop = None
        for i in range(start, len(reports)):
            seen = reports[i]
            mine = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            if not rule.at_rung(study, mine, seen):
                continue  # under promotion only a rung's evaluation branches and reports
            trial.report(rec["branches"][seen], seen)
            used += costs[seen]
            if trial.should_prune():
                stop = i
                break
        if stop is not None:
            used += per_eval * (stop + 1 - start) + OVERHEAD_S
            trial.set_user_attr(ATTR_PAUSED_AT, reports[stop])
            paused[trial.number] = (trial, key, stop + 1)
            continue
        used += per_eval * (len(reports) + 1 - start)
        study.tell(trial, rec["value"])
        complete[key] = rec["value"]
        if rec["value"] <= target * 1.01:
            return used <= budget, used
    return False, used


CANDIDATES = {
    "TPE, 4 start-up, no pruning": lambda g, s, b, t, e: replay_plain({"name": "tpe", "n_startup_trials": 4}, s, g, b, t),
    "GP, 4 start-up, no pruning (sweep=auto's sampler until 2026-12-05)": lambda g, s, b, t, e: replay_plain(
        {"name": "gp", "n_startup_trials": 4, "deterministic_objective": True}, s, g, b, t),
    "random + pause and promote": lambda g, s, b, t, e: replay_promotion({"name": "random"}, s, g, b, t, e),
    "TPE + pause and promote (teach_sampler=0)": lambda g, s, b, t, e: replay_promotion(
        {"name": "tpe", "n_startup_trials": 4}, s, g, b, t, e),
    "TPE reading rungs (teach_sampler=4) + pause and promote: sweep=auto": lambda g, s, b, t, e: replay_promotion(
        {"name": "tpe", "n_startup_trials": 4}, s, g, b, t, e, view=4),
    # (GP reading rungs: left out; under promotion it re-proposed a paused configuration thousands of times, each
    # answered "busy", as with a pruner: sweeper.setting_checks refuses GP with a pruner)
}


def rank_table(wsd: dict) -> List[dict]:
    """Per reported step: where the three configurations that end best rank among all 36 by that report."""
    final = sorted(wsd, key=lambda k: wsd[k]["value"])[:3]
    rows = []
    for seen in sorted(next(iter(wsd.values()))["branches"]):
        order = sorted(wsd, key=lambda k: wsd[k]["branches"][seen])
        rows.append({"examples": seen, "ranks": [order.index(k) + 1 for k in final]})
    return rows


def main() -> int:
    import warnings

    import optuna

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="train the WSD grids first")
    ap.add_argument("--grids", default=str(ROOT / "outputs/bench/se4"),
                    help="bench/sweep_efficiency.py's run directory: the cosine grids (and instruct's base)")
    ap.add_argument("--out", default=str(OUT), help="where the WSD grids are recorded and read")
    ap.add_argument("--decay-type", default="cosine", choices=("cosine", "linear", "1-sqrt"),
                    help="the WSD decay shape to record under (scheduler.kwargs.decay_type)")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--budget-share", type=float, default=0.2)
    ap.add_argument("--publish", action="store_true", help="write bench/results/<name>.{json,md}")
    ap.add_argument("--name", default="wsd_rungs", help="the results' file name (default %(default)s)")
    args = ap.parse_args()
    grids = Path(args.grids)
    if args.record:
        record(grids, Path(args.out), args.decay_type)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    tasks = {}
    for name in ("letters", "instruct"):
        wsd = read_wsd(name, Path(args.out))
        cosine = grid_of(json.loads((grids / name / "runs.json").read_text()))
        best = {"cosine": min(r["value"] for r in cosine.values()), "wsd": min(r["value"] for r in wsd.values())}
        budget = args.budget_share * sum(r["seconds"] for r in cosine.values())
        every = se.TASKS[name].eval_examples
        rows = []
        for label, run in CANDIDATES.items():
            for ref in ("cosine", "wsd"):
                runs = [run(wsd, seed, budget, best[ref], every) for seed in range(args.seeds)]
                rows.append({"sweep": label, "reference": ref, "reached": sum(r[0] for r in runs),
                             "seeds_0_1_2": sum(r[0] for r in runs[:3]),
                             "median_used_s": statistics.median(r[1] for r in runs)})
                print(f"{name:9s} {label:50s} vs {ref:6s} best: {rows[-1]['reached']}/{args.seeds}", flush=True)
        tasks[name] = {"best": best, "best_config": {"cosine": min(cosine, key=lambda k: cosine[k]["value"]),
                                                     "wsd": min(wsd, key=lambda k: wsd[k]["value"])},
                       "within_1pct_of_cosine_best": sorted(k for k in wsd if wsd[k]["value"] <= best["cosine"] * 1.01),
                       "budget_s": budget, "ranks": rank_table(wsd), "rows": rows,
                       "grid": [{"config": list(k), **v} for k, v in sorted(wsd.items())]}
    if args.publish:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": f"{platform.node()}: grids recorded on 2 AMD EPYC CPU cores (x86_64), no GPU, "
                           f"Python {platform.python_version()}", "seeds": args.seeds,
                "budget_share": args.budget_share, "branch_share": BRANCH_SHARE, "decay_type": args.decay_type,
                "command": " ".join(["python bench/wsd_rungs.py", *sys.argv[1:]])}
        out = ROOT / "bench" / "results"
        (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "tasks": tasks}, indent=1, default=str))
        (out / f"{args.name}.md").write_text(report(meta, tasks))
    return 0


def report(meta: dict, tasks: dict) -> str:
    lines = ["# WSD rung branches: do they rank as the end does, and what a sampler reading them gains", "",
             f"{meta['date']}; {meta['machine']}. Grids: `python bench/wsd_rungs.py --record` with the same --out and "
             f"--decay-type (every trial under scheduler=wsd, decay `{meta.get('decay_type', 'cosine')}`, with a "
             f"{meta['branch_share']} decay branch at every evaluation); replays (no training): "
             f"`{meta.get('command', 'python bench/wsd_rungs.py --seeds 30 --publish')}`. Budget: "
             f"{meta['budget_share']} of the cosine grid's trial-seconds (bench/results/sweep_efficiency_epyc.md). "
             "See the script's docstring for the cost model."]
    for name, t in tasks.items():
        lines += ["", f"## Task `{name}`", "",
                  f"Cosine grid's best {t['best']['cosine']:.4f} {tuple(t['best_config']['cosine'])}; WSD grid's best "
                  f"{t['best']['wsd']:.4f} {tuple(t['best_config']['wsd'])} "
                  f"({100 * (t['best']['wsd'] / t['best']['cosine'] - 1):+.1f}%). WSD configurations within 1% of the "
                  f"cosine best: {', '.join(str(tuple(k)) for k in t['within_1pct_of_cosine_best']) or 'none'}.", "",
                  "Rank (of 36) of the three configurations that end best, by the value each trial reports there "
                  "(a decay branch; the last row is the run's own end):", "",
                  "| examples seen | ranks of the final 1st, 2nd, 3rd |", "|---|---|"]
        lines += [f"| {r['examples']} | {', '.join(map(str, r['ranks']))} |" for r in t["ranks"]]
        lines += ["", f"Sweeps on {t['budget_s']:.0f} trial-seconds, {meta['seeds']} sampler seeds: a seed counts "
                  "when a trial within 1% of the reference's best finished on the budget.", "",
                  "| sweep | vs the cosine grid's best | vs the WSD grid's best | seeds 0-2 (cosine, WSD) |",
                  "|---|---|---|---|"]
        by = {(r["sweep"], r["reference"]): r for r in t["rows"]}
        for label in dict.fromkeys(r["sweep"] for r in t["rows"]):
            c, w = by[(label, "cosine")], by[(label, "wsd")]
            lines.append(f"| {label} | {c['reached']}/{meta['seeds']} | {w['reached']}/{meta['seeds']} | "
                         f"{c['seeds_0_1_2']}/3, {w['seeds_0_1_2']}/3 |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
