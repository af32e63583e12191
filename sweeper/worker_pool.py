"""The sweep's warm workers: one per slot, started on demand, replaced when dead or worn.

A worker (:class:`sweeper.worker.Worker`) keeps what trials share and runs one trial at a time;
this pool decides which slots use one, starts it, and after each trial replaces a worker that died
(the trial failed with that reason) or retires one past ``worker_max_trials`` or
``worker_max_rss_mb``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from sweeper.settings import select
from sweeper.slots import Slot
from sweeper.worker import WarmTrial, Worker

log = logging.getLogger("ftrun.sweeper")


def worker_env(job_cfg, varied: Sequence[str], pruner: Any) -> Dict[str, str]:
    """The warm workers' ``FTRUN_UNUSED_LIBRARIES``: the optional libraries no trial of the sweep needs
    (:func:`ftrun.unused_libraries.unused_in_sweep`); none set when the user set it (the workers inherit theirs) or
    the base config is not a run's."""
    from ftrun.contract import UNUSED_LIBRARIES_ENV
    from ftrun.unused_libraries import unused_in_sweep

    if UNUSED_LIBRARIES_ENV in os.environ or select(job_cfg, "method.name") is None:
        return {}
    try:
        return {UNUSED_LIBRARIES_ENV: ",".join(unused_in_sweep(job_cfg, varied, pruner))}
    except (AttributeError, KeyError):  # a partial config (not a composed run's): hide nothing
        return {}


class WorkerPool:
    """Warm workers by slot index; their logs go to ``<log_dir>/slot<i>_<n>.log``."""

    def __init__(self, conf: Mapping[str, Any], log_dir: Path, env: Optional[Mapping[str, str]] = None):
        self.env = {"TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.mode = str(conf.get("workers", "warm"))
        self.custom_command = bool(conf.get("command"))
        self.max_trials = int(conf.get("worker_max_trials") or 0)
        self.max_rss_mb = float(conf.get("worker_max_rss_mb") or 0)
        self.log_dir = Path(log_dir)
        self.workers: Dict[int, Worker] = {}

    def warm(self, slot: Slot) -> bool:
        """Whether this slot's trials run in a warm worker: ftrun's own entry point, one process per trial."""
        return self.mode == "warm" and not self.custom_command and slot.processes == 1

    def get(self, slot: Slot) -> Worker:
        """The slot's live worker, started if it has none."""
        worker = self.workers.get(slot.index)
        if worker is None or not worker.alive():
            n = sum(1 for _ in self.log_dir.glob(f"slot{slot.index}_*.log")) if self.log_dir.is_dir() else 0
            worker = Worker(slot, self.log_dir / f"slot{slot.index}_{n:03d}.log", env=self.env)
            self.workers[slot.index] = worker
        return worker

    def after_trial(self, slot: Slot, proc: WarmTrial, reason: Optional[str]) -> Optional[str]:
        """The trial's failure reason, given its worker's fate: a dead worker is the trial's failure and is
        replaced; a worn one is retired."""
        worker = proc.worker
        if proc.worker_died:
            self._drop(slot)
            why = reason or f"exit status {proc.returncode}"
            return (f"its warm worker (pid {worker.pid}) died: {why}; the slot starts a new worker "
                    f"(rerun with hydra.sweeper.workers=fresh to see the trial alone)")
        if getattr(proc, "others_running", lambda: False)():  # a packed trial: its pack is still training
            return reason
        rss = worker.rss_mb() if self.max_rss_mb else 0.0
        if (self.max_trials and worker.trials >= self.max_trials) or (self.max_rss_mb and rss > self.max_rss_mb):
            log.info("Retiring warm worker %d after %d trials (%.0f MB resident)", worker.pid, worker.trials,
                     rss or worker.rss_mb())
            self._drop(slot)
        return reason

    def _drop(self, slot: Slot) -> None:
        worker = self.workers.pop(slot.index, None)
        if worker is not None:
            worker.close()

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()
