"""The sweep's summary: counts, the best trial(s) and the command that reruns them, the compute spent
against the grid of the same space, and a table of every trial (``summary.md`` / ``summary.json``)."""

from __future__ import annotations

import shlex
from typing import Any, List, Mapping, Optional, Sequence

from ftrun.contract import (ATTR_FAIL_REASON, ATTR_OOM_RETRY, ATTR_OVERRIDES, ATTR_PACKED_WITH, ATTR_PAUSED_AT,
                            ATTR_PROMOTIONS, ATTR_SURPLUS, TAG_RETRY_OF)
from sweeper.compute import KINDS, compute_account, compute_text, grid_cost, trial_kind, trial_seconds
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
    counts = {s: sum(1 for t in trials if trial_kind(t) == KINDS[s]) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    counts["PAUSED"] = sum(1 for t in trials if trial_kind(t) == "paused")  # hydra.sweeper.pruner=promotion
    counts["PROMOTED"] = sum(1 for t in trials if t.user_attrs.get(ATTR_PROMOTIONS))
    counts["REPEATED"] = len(repeats)
    counts["NOT_RUN"] = len(surplus)
    best = []
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trials if len(objectives) > 1 else [study.best_trial]
    lines = [f"trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
             + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
             + (f", {counts['PAUSED']} paused at a rung" if counts["PAUSED"] else "")
             + (f"; {counts['PROMOTED']} resumed from a rung after pausing" if counts["PROMOTED"] else "")
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
    compute = compute_account(trials)
    grid = grid_cost(compute, space)
    lines += ["## Compute", "", compute_text(compute, grid), ""]
    lines += ["## All trials", "",
              "| trial | state | " + " | ".join(objectives) + " | params | time (s) | note |",
              "|---|---|" + "---|" * len(objectives) + "---|---|---|"]
    for t in trials:
        if t.values is not None:
            vals = [f"{v:.6g}" for v in t.values]
        elif t.state in (TrialState.PRUNED, TrialState.RUNNING) and t.intermediate_values:
            step = max(t.intermediate_values)
            vals = [f"{t.intermediate_values[step]:.6g} @{step}"] + [""] * (len(objectives) - 1)
        else:
            vals = [""] * len(objectives)
        note = t.user_attrs.get(ATTR_FAIL_REASON) or ""
        if t.user_attrs.get(ATTR_OOM_RETRY):
            note = f"OOM retry ({t.user_attrs['oom_retry']}) {note}".strip()
        if t.user_attrs.get("duplicate_of") is not None:
            note = f"same configuration as trial {t.user_attrs['duplicate_of']}: not trained again"
        if t.user_attrs.get(ATTR_PROMOTIONS):
            note = f"promoted {t.user_attrs[ATTR_PROMOTIONS]}x after pausing; {note}".rstrip("; ")
        if trial_kind(t) == "paused":
            note = f"paused at {t.user_attrs[ATTR_PAUSED_AT]} examples, waiting to be promoted"
        if t.user_attrs.get(TAG_RETRY_OF) is not None:
            note = f"retry of trial {t.user_attrs['retry_of']} {note}".strip()
        if len(t.user_attrs.get(ATTR_PACKED_WITH) or []) > 1:  # sweeper.pack: its time is its share of the pack's
            pack = t.user_attrs[ATTR_PACKED_WITH]
            note = f"packed with {len(pack)} (trials {', '.join(map(str, pack))}) {note}".strip()
        dur = trial_seconds(t)
        state = "PAUSED" if trial_kind(t) == "paused" else t.state.name
        lines.append(f"| {t.number} | {state} | " + " | ".join(vals) + f" | {_params(t.params)} | "
                     + (f"{dur:.0f}" if dur else "") + f" | {note.replace('|', '/')[:200]} |")
    spent = {"trial_seconds": compute.used_s, "trials": compute.trained, "saved_s": compute.saved_s,
             "branch_s": compute.branch_s,
             **{k: v for k, v in grid.items() if k != "finite"}}
    return {"counts": counts, "compute": spent,
            "best_trials": [t.number for t in best], "best_values": [list(t.values) for t in best],
            "best_params": [dict(t.params) for t in best], "rerun": rerun, "lines": lines}


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={(f'{v:.3g}' if isinstance(v, float) else v)}" for k, v in params.items())


def write_summary(study, s, stopped: Optional[str], budget_note: Optional[str]) -> dict:
    """Write ``summary.md`` and ``summary.json`` into the sweep directory of ``s`` (:class:`sweeper.settings.Settings`);
    returns :func:`build_summary`'s dict with ``path`` (summary.md) added."""
    import json

    from sweeper.study import safe_url

    summary = build_summary(study, s.objectives, s.command, s.entry_args, space=s.space)
    path = s.sweep_dir / "summary.md"
    header = [f"# Sweep {s.study_name}", "", f"storage: `{safe_url(s.storage_url)}`", ""]
    if stopped:
        header += [f"**Stopped early:** {stopped}", ""]
    if budget_note:
        header += [f"Stopped starting trials when the compute budget was spent ({budget_note}).", ""]
    path.write_text("\n".join(header + summary["lines"]) + "\n")
    (s.sweep_dir / "summary.json").write_text(json.dumps(
        {k: v for k, v in summary.items() if k != "lines"} | {"study_name": s.study_name,
                                                               "storage": safe_url(s.storage_url)}, indent=2))
    return {**summary, "path": path}
