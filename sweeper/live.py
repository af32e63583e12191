"""What a sweep shows while it runs: a live table of its trials under a header with N/M trials,
the best so far and the command that reruns it, the budget used and the ETA.

Fed by a narrow interface (:meth:`SweepView.trial_started`, :meth:`SweepView.trial_finished`), it
knows nothing of the sweep loop. On a terminal the table is redrawn in place (rich) and the sweeper's
log lines print above it; without one (CI, SLURM, a file) each finished trial adds one plain status
line. Each trial's own output stays in its ``trial.log``.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from ftrun.contract import ATTR_OVERRIDES
from ftrun.terminal import clock, display_mode, live_display, number

log = logging.getLogger("ftrun.sweeper")

SHOWN_ROWS = 15  # the running trials, the best and the newest; older ones are counted in the caption
STATE_STYLE = {"RUNNING": "cyan", "PAUSED": "yellow", "COMPLETE": "green", "PRUNED": "magenta", "FAIL": "red"}


@dataclass
class TrialRow:
    """One trial as the table shows it."""

    number: int
    state: str
    """RUNNING, PAUSED, COMPLETE, PRUNED or FAIL (Optuna's names)."""
    params: Dict[str, object] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    value: Optional[float] = None
    started: float = field(default_factory=time.time)
    duration_s: Optional[float] = None
    reason: str = ""
    share: float = 1.0
    """1/K for a trial trained in a pack of K (its trial-seconds are its wall time x share)."""


def rows_from_study(study) -> List[TrialRow]:
    """The study's finished trials (an earlier run of the same sweep), as rows."""
    from sweeper.compute import trial_kind

    rows = []
    for t in study.get_trials(deepcopy=False):
        paused = trial_kind(t) == "paused"  # waiting at a rung for a promotion (hydra.sweeper.pruner=promotion)
        if not (t.state.is_finished() or paused) or "duplicate_of" in t.user_attrs:
            continue
        rows.append(TrialRow(t.number, "PAUSED" if paused else t.state.name, dict(t.params),
                             list(t.user_attrs.get(ATTR_OVERRIDES, [])), t.values[0] if t.values else None,
                             duration_s=t.user_attrs.get("duration_s")))
    return rows


class SweepView:
    """The live table and its header; see the module's docstring."""

    def __init__(self, study_name: str, n_trials: int, objective: str, direction: str,
                 budget_trial_s: Optional[float] = None, budget_wall_s: Optional[float] = None,
                 rerun_prefix: Sequence[str] = ("python", "-m", "ftrun"), mode: Optional[str] = None):
        self.study_name, self.n_trials, self.objective = study_name, n_trials, objective
        self.maximize = str(direction).lower().endswith("maximize")
        self.budget_trial_s, self.budget_wall_s = budget_trial_s, budget_wall_s
        self.rerun_prefix = list(rerun_prefix)
        self.mode = mode or display_mode()
        self.rows: Dict[int, TrialRow] = {}
        self.started = time.time()
        self._prior_s = 0.0  # trial-seconds of the rows an earlier run of the sweep finished
        self._parallel = 1
        self._display = None

    # -- the interface the sweep loop feeds ---------------------------------------------------
    def start(self, rows: Iterable[TrialRow] = ()) -> "SweepView":
        for r in rows:
            self.rows[r.number] = r
        self._prior_s = sum(r.duration_s or 0.0 for r in self.rows.values())
        if self.mode == "live":
            self._display = live_display(renderable=self)
            self._display.__enter__()
        return self

    def trial_started(self, number: int, params: Dict[str, object], overrides: Sequence[str] = (),
                      share: float = 1.0) -> None:
        self.rows[number] = TrialRow(number, "RUNNING", dict(params), list(overrides), share=share)
        self._parallel = max(self._parallel, len(self._running()))

    def trial_finished(self, number: int, state: str, value: Optional[float], duration_s: float,
                       reason: str = "") -> None:
        row = self.rows.setdefault(number, TrialRow(number, state))
        row.state, row.value, row.duration_s, row.reason = state, value, duration_s, reason or ""
        if self.mode == "lines":
            log.info("%s", " · ".join(self.header()))

    def close(self) -> None:
        if self._display is not None:
            self._display.__exit__(None, None, None)
            self._display = None

    # -- what it shows ------------------------------------------------------------------------
    def _running(self) -> List[TrialRow]:
        return [r for r in self.rows.values() if r.state == "RUNNING"]

    def best(self) -> Optional[TrialRow]:
        done = [r for r in self.rows.values() if r.state == "COMPLETE" and r.value is not None]
        if not done:
            return None
        return (max if self.maximize else min)(done, key=lambda r: r.value)

    def trial_seconds(self) -> float:
        now = time.time()
        finished = sum(r.duration_s or 0.0 for r in self.rows.values() if r.state != "RUNNING")
        return finished + sum((now - r.started) * r.share for r in self._running())

    def eta_s(self) -> Optional[float]:
        """Mean trial time x trials left / trials in parallel, capped by the budget left."""
        times = [r.duration_s / r.share for r in self.rows.values()  # wall times: a pack's members share theirs
                 if r.state in ("COMPLETE", "PRUNED") and r.duration_s]
        left = self.n_trials - self.done()
        if left <= 0:
            return 0.0
        eta = None
        if times:
            mean = sum(times) / len(times)
            running = self._running()
            waves = math.ceil(max(0, left - len(running)) / self._parallel)
            now = time.time()
            eta = max((max(0.0, mean - (now - r.started)) for r in running), default=0.0) + waves * mean
        for budget, used in ((self.budget_trial_s, self.trial_seconds() / self._parallel),
                             (self.budget_wall_s, time.time() - self.started)):
            if budget is not None and eta is not None:
                eta = min(eta, max(0.0, budget - used))
        return eta

    def done(self) -> int:
        return sum(1 for r in self.rows.values() if r.state in ("COMPLETE", "PRUNED"))

    def header(self) -> List[str]:
        """N/M trials, the best so far with its rerun command, the budget used and the ETA."""
        counts = {s: sum(1 for r in self.rows.values() if r.state == s) for s in ("RUNNING", "FAIL", "PRUNED")}
        first = (f"Sweep {self.study_name}: {self.done()}/{self.n_trials} trials done ({counts['RUNNING']} running, "
                 f"{counts['PRUNED']} pruned, {counts['FAIL']} failed), ETA {clock(self.eta_s())}")
        best = self.best()
        second = ("best so far: none yet" if best is None else
                  f"best so far: trial {best.number}, {self.objective} {number(best.value)}: "
                  f"{shlex.join([*self.rerun_prefix, *best.overrides])}")
        budget = []
        if self.budget_trial_s is not None:
            budget.append(f"{self.trial_seconds():.0f} of {self.budget_trial_s:.0f} trial-s (budget_trial_s)")
        if self.budget_wall_s is not None:
            budget.append(f"{time.time() - self.started:.0f} of {self.budget_wall_s:.0f} s wall (budget_wall_s)")
        third = "budget: " + (", ".join(budget) if budget else f"no budget set ({self.trial_seconds():.0f} trial-s)")
        return [first, second, third]

    def table(self):
        from rich.table import Table

        rows = sorted(self.rows.values(), key=lambda r: r.number)
        keep = {r.number for r in self._running()} | {r.number for r in rows[-SHOWN_ROWS:]}
        best = self.best()
        if best is not None:
            keep.add(best.number)
        shown = [r for r in rows if r.number in keep]
        hidden = len(rows) - len(shown)
        table = Table(caption=f"{hidden} more trials in the study" if hidden else None, expand=False)
        for name in ("trial", "state", self.objective, "params", "time"):
            table.add_column(name, justify="right" if name in ("trial", "time") else "left")
        now = time.time()
        for r in shown:
            seconds = r.duration_s if r.duration_s is not None else now - r.started
            mark = " *" if best is not None and r.number == best.number else ""
            table.add_row(f"{r.number}{mark}", f"[{STATE_STYLE.get(r.state, 'white')}]{r.state}[/]",
                          number(r.value) if r.value is not None else (r.reason[:40] or "-"),
                          " ".join(f"{k}={number(v)}" for k, v in r.params.items()), clock(seconds))
        return table

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        return Group(*(Text(line) for line in self.header()), self.table())
