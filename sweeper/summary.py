"""The sweep's summary: counts, the best trial(s) and the command that reruns them, the compute spent
against the grid of the same space, and a table of every trial (``summary.md`` / ``summary.json``)."""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ftrun.contract import ATTR_FAIL_REASON, ATTR_OOM_RETRY, ATTR_OVERRIDES, ATTR_SURPLUS, TAG_RETRY_OF
from sweeper.space import SearchSpace


def build_summary(study, objectives: Sequence[str], command: Sequence[str], entry_args: Sequence[str] = (),
                  space: Optional[SearchSpace] = None) -> dict:
    """Counts, best trial(s) (the Pareto front for several objectives), rerun command, compute spent
    against the equivalent grid, table of trials."""
    import optuna

    TrialState = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    repeats = [t for t in trials if "duplicate_of" in t.user_attrs]
    surplus = [t for t in trials if ATTR_SURPLUS in t.user_attrs]  # asked for past n_trials by another host
    counts = {s: sum(1 for t in trials if t.state.name == s and t not in repeats and t not in surplus)
              for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    counts["REPEATED"] = len(repeats)
    counts["NOT_RUN"] = len(surplus)
    best = []
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trials if len(objectives) > 1 else [study.best_trial]
    lines = [f"trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
             + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
             + (f", {counts['REPEATED']} repeated configurations answered without training" if repeats else "")
             + (f", {counts['NOT_RUN']} asked for past n_trials and not run" if surplus else ""), ""]
    rerun: List[str] = []
    if best:
        title = "Pareto front" if len(objectives) > 1 else "Best trial"
        lines.append(f"## {title}")
        for t in best:
            vals = ", ".join(f"{o}={v:.6g}" for o, v in zip(objectives, t.values))
            lines.append(f"- trial {t.number}: {vals}; {_params(t.params)}")
        b = best[0]
        cmd = ["python", "-m", "ftrun", *entry_args, *b.user_attrs.get(ATTR_OVERRIDES, [])]
        rerun = cmd
        lines += ["", "Rerun the best trial:", "", f"    {shlex.join(cmd)}", ""]
    compute = compute_spent(trials, space)
    lines += ["## Compute", "", compute["text"], ""]
    lines += ["## All trials", "",
              "| trial | state | " + " | ".join(objectives) + " | params | time (s) | note |",
              "|---|---|" + "---|" * len(objectives) + "---|---|---|"]
    for t in trials:
        if t.values is not None:
            vals = [f"{v:.6g}" for v in t.values]
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            vals = [f"{t.intermediate_values[step]:.6g} @{step}"] + [""] * (len(objectives) - 1)
        else:
            vals = [""] * len(objectives)
        note = t.user_attrs.get(ATTR_FAIL_REASON) or ""
        if t.user_attrs.get(ATTR_OOM_RETRY):
            note = f"OOM retry ({t.user_attrs['oom_retry']}) {note}".strip()
        if t.user_attrs.get("duplicate_of") is not None:
            note = f"same configuration as trial {t.user_attrs['duplicate_of']}: not trained again"
        if t.user_attrs.get(TAG_RETRY_OF) is not None:
            note = f"retry of trial {t.user_attrs['retry_of']} {note}".strip()
        dur = t.user_attrs.get("duration_s")
        lines.append(f"| {t.number} | {t.state.name} | " + " | ".join(vals) + f" | {_params(t.params)} | "
                     + (f"{dur:.0f}" if dur else "") + f" | {note.replace('|', '/')[:200]} |")
    return {"counts": counts, "compute": {k: v for k, v in compute.items() if k != "text"},
            "best_trials": [t.number for t in best], "best_values": [list(t.values) for t in best],
            "best_params": [dict(t.params) for t in best], "rerun": rerun, "lines": lines}


GRID_POINTS_PER_INTERVAL = 5  # values per continuous parameter when a grid of a continuous space is priced


def compute_spent(trials, space: Optional[SearchSpace]) -> Dict[str, Any]:
    """Trial-seconds this study spent, and what the grid over the same space would have cost at the
    mean time of a trial that ran to the end."""
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs and ATTR_SURPLUS not in t.user_attrs
               and t.state.is_finished()]
    spent = sum(float(t.user_attrs.get("duration_s") or 0.0) for t in trained)
    full = [float(t.user_attrs["duration_s"]) for t in trained
            if t.state.name == "COMPLETE" and t.user_attrs.get("duration_s")]
    out: Dict[str, Any] = {"trial_seconds": spent, "trials": len(trained)}
    text = f"Spent {spent:.0f} trial-seconds on {len(trained)} trials"
    if full and space is not None and space.distributions:
        per = sum(full) / len(full)
        if space.finite():
            size, how = space.grid_size(), "the grid of this space"
        else:
            size = _coarse_grid_size(space)
            how = f"a coarse grid ({GRID_POINTS_PER_INTERVAL} values per continuous parameter)"
        grid = size * per
        out.update(grid_configurations=size, grid_trial_seconds=grid, mean_complete_trial_s=per,
                   share_of_grid=spent / grid if grid else None)
        text += (f"; {how} has {size} configurations, which at the mean complete trial's {per:.0f} s would cost "
                 f"about {grid:.0f} trial-seconds: this sweep used {100 * spent / grid:.0f}% of that.")
    else:
        text += "."
    out["text"] = text
    return out


def _coarse_grid_size(space: SearchSpace) -> int:
    size = 1
    for _, values in _grid_or_coarse(space):
        size *= max(1, len(values))
    return size


def _grid_or_coarse(space: SearchSpace):
    from optuna.distributions import FloatDistribution

    from sweeper.space import grid_values

    for name, d in space.distributions.items():
        continuous = isinstance(d, FloatDistribution) and d.step is None
        yield name, range(GRID_POINTS_PER_INTERVAL) if continuous else grid_values(name, d)


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={(f'{v:.3g}' if isinstance(v, float) else v)}" for k, v in params.items())
