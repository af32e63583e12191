"""How a run stops on a signal: SIGTERM (the board's Stop, a sweep stopping its trial, SLURM's scancel)
and Ctrl-C raise :class:`Stopped` where the run is, so its clean-up runs and its MLflow run ends KILLED
(:func:`ftrun.tracking.end_interrupted_run` for a run stopped while it was still setting up).

Inside :func:`deferred` (the tracker's writes to MLflow) the signal waits until the block ends: raised in
the middle of a database write, it could leave the store's connection mid-transaction, so that ending the
run KILLED then fails and the run stays RUNNING."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class Stopped(KeyboardInterrupt):
    """The run got SIGTERM or SIGINT; the process exits with ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


_depth = 0
"""How many :func:`deferred` blocks the main thread is in."""
_pending: Optional[int] = None
"""A signal that came inside a :func:`deferred` block."""


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise :class:`Stopped` (main thread only: Python delivers signals there)."""

    def _raise(signum, frame):
        global _pending
        if _depth:
            _pending = signum
        else:
            raise Stopped(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _raise)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop signal until the block ends, then raise it (main thread; elsewhere a no-op)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)
