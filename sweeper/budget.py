"""The sweep's budgets: trial-seconds of the study (``budget_trial_s``) and wall seconds of this run
(``budget_wall_s``); once either is spent no new trial starts, and running ones finish."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional


class Budget:
    """The tighter of the two budgets; trial-seconds come from the study's compute account."""

    def __init__(self, trial_s: Optional[float], wall_s: Optional[float]):
        self.trial_s, self.wall_s = trial_s, wall_s
        self.started = time.time()
        self.spent = False  # set once by the sweep, for its summary

    def start(self) -> None:
        """Start the wall clock: when the first trial can start (opening the study is not counted)."""
        self.started = time.time()

    def left(self, trial_seconds: Callable[[], float]) -> float:
        """Seconds left in the tighter budget (inf without one); ``trial_seconds()``: the study's so far."""
        left = math.inf
        if self.trial_s is not None:
            left = min(left, self.trial_s - trial_seconds())
        if self.wall_s is not None:
            left = min(left, self.wall_s - (time.time() - self.started))
        return left

    def text(self, trial_seconds: Callable[[], float]) -> str:
        parts = []
        if self.trial_s is not None:
            parts.append(f"{trial_seconds():.0f} of {self.trial_s:.0f} trial-s")
        if self.wall_s is not None:
            parts.append(f"{time.time() - self.started:.0f} of {self.wall_s:.0f} wall s")
        return ", ".join(parts)
