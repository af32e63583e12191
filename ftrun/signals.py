"""How a run stops on a signal: SIGTERM (the board's Stop, a sweep stopping its trial, SLURM's scancel)
and Ctrl-C raise :class:`Stopped` where the run is, so its clean-up runs and its MLflow run ends KILLED
(:func:`ftrun.tracking.end_interrupted_run` for a run stopped while it was still setting up)."""

from __future__ import annotations

import signal
import threading


class Stopped(KeyboardInterrupt):
    """The run got SIGTERM or SIGINT; the process exits with ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise :class:`Stopped` (main thread only: Python delivers signals there)."""

    def _raise(signum, frame):
        raise Stopped(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _raise)
