"""The compute account of a study: trials and trial-seconds by kind, what pruning saved, what a grid would cost.

One account, read by the sweep's budget, ``summary.md`` / ``summary.json``, the HTML report
(``python -m analysis sweep``) and the board's sweep tab, so they cannot disagree.

A trial's seconds are the sweeper's own measure, the ``duration_s`` user attribute (from the
moment the trial is handed to its process to its end). A trial the sweeper launched but could not
time (recorded after its sweeper died) counts 0, not the hours until it was found; a trial of a
study another tool wrote counts Optuna's start-to-end time. A configuration answered from the study
without training (``repeated``) and a trial asked for past n_trials and never run (``not run``)
cost nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional

from ftrun.contract import ATTR_BRANCH_S, ATTR_PAUSED_AT, ATTR_SURPLUS, ATTR_TRIAL_DIR

GRID_POINTS_PER_INTERVAL = 5  # values per continuous parameter when a grid of a continuous space is priced
KINDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
FINISHED = ("complete", "pruned", "failed")
SPENT = (*FINISHED, "paused", "running")  # kinds whose trial-seconds count as used


def trial_kind(t) -> str:
    """complete / pruned / failed / running / paused / waiting, or repeated / not run for trials that never
    trained (paused: RUNNING in the study, waiting at a rung to be promoted; hydra.sweeper.pruner=promotion)."""
    if "duplicate_of" in t.user_attrs:
        return "repeated"
    if ATTR_SURPLUS in t.user_attrs:
        return "not run"
    if t.state.name == "RUNNING" and t.user_attrs.get(ATTR_PAUSED_AT) is not None:
        return "paused"
    return KINDS.get(t.state.name, t.state.name.lower())


def trial_seconds(t) -> float:
    """The trial-seconds trial ``t`` used (0 for one that never trained; a running or paused one: what its
    sweeper recorded so far, the time before its last pause)."""
    if trial_kind(t) not in SPENT:
        return 0.0
    if trial_kind(t) not in FINISHED:
        return float(t.user_attrs.get("duration_s") or 0.0)
    if t.user_attrs.get("duration_s") is not None:
        return float(t.user_attrs["duration_s"])
    if ATTR_TRIAL_DIR in t.user_attrs:  # launched by the sweeper, which died before it could time it
        return 0.0
    return t.duration.total_seconds() if t.duration is not None else 0.0


@dataclass
class Compute:
    """Trials and trial-seconds by kind, and the pruner's estimated saving."""

    counts: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    saved_s: float = 0.0
    """What the pruned trials would have cost to finish: the median complete trial's seconds minus their own."""
    mean_complete_s: Optional[float] = None
    branch_s: float = 0.0
    """Of the trial-seconds used, those spent in rung decay branches (hydra.sweeper.rung_branch)."""

    @property
    def used_s(self) -> float:
        """Trial-seconds of every trial that ran (complete, pruned, failed; paused and promoted ones as far as
        recorded)."""
        return sum(self.seconds.get(k, 0.0) for k in SPENT)

    @property
    def trained(self) -> int:
        """Trials that ran to an end (complete, pruned, failed)."""
        return sum(self.counts.get(k, 0) for k in FINISHED)


def compute_account(trials: Iterable[Any]) -> Compute:
    """The account of a study's trials (``study.get_trials()``)."""
    out = Compute()
    complete = []
    trials = list(trials)
    for t in trials:
        kind = trial_kind(t)
        out.counts[kind] = out.counts.get(kind, 0) + 1
        out.seconds[kind] = out.seconds.get(kind, 0.0) + trial_seconds(t)
        if kind == "complete":
            complete.append(trial_seconds(t))
        if kind in SPENT:  # as the trial last reported it (a trial stopped mid-branch reports none for it)
            out.branch_s += float(t.user_attrs.get(ATTR_BRANCH_S) or 0.0)
    if complete:
        out.mean_complete_s = sum(complete) / len(complete)
        full = statistics.median(complete)
        out.saved_s = sum(max(0.0, full - trial_seconds(t)) for t in trials if trial_kind(t) == "pruned")
    return out


def grid_cost(compute: Compute, space) -> Dict[str, Any]:
    """What the grid over ``space`` (a :class:`sweeper.space.SearchSpace`) would cost at the mean complete trial's
    seconds; {} when there is no complete trial or no space."""
    if not compute.mean_complete_s or space is None or not space.distributions:
        return {}
    size = space.grid_size() if space.finite() else _coarse_grid_size(space)
    grid = size * compute.mean_complete_s
    return {"grid_configurations": size, "grid_trial_seconds": grid, "mean_complete_trial_s": compute.mean_complete_s,
            "share_of_grid": compute.used_s / grid if grid else None, "finite": space.finite()}


def compute_text(compute: Compute, grid: Dict[str, Any]) -> str:
    """One paragraph: trial-seconds spent, and against the grid when priced."""
    text = f"Spent {compute.used_s:.0f} trial-seconds on {compute.trained} trials"
    if compute.branch_s and compute.used_s:
        text += (f" ({compute.branch_s:.1f} trial-seconds of them, {100 * compute.branch_s / compute.used_s:.0f}%, "
                 "in rung decay branches)")
    if not grid:
        return text + "."
    how = ("the grid of this space" if grid["finite"] else
           f"a coarse grid ({GRID_POINTS_PER_INTERVAL} values per continuous parameter)")
    return text + (f"; {how} has {grid['grid_configurations']} configurations, which at the mean complete trial's "
                   f"{grid['mean_complete_trial_s']:.0f} s would cost about {grid['grid_trial_seconds']:.0f} "
                   f"trial-seconds: this sweep used {100 * compute.used_s / grid['grid_trial_seconds']:.0f}% of that.")


def _coarse_grid_size(space) -> int:
    from optuna.distributions import FloatDistribution

    from sweeper.space import grid_values

    size = 1
    for name, d in space.distributions.items():
        continuous = isinstance(d, FloatDistribution) and d.step is None
        size *= GRID_POINTS_PER_INTERVAL if continuous else max(1, len(grid_values(name, d)))
    return size
