"""SIGTERM and Ctrl-C during a sweep: a flag the loop checks between steps.

Raising from inside a storage write would leave the study's database locked for the clean-up that
follows, so the first signal only records itself; a second one stops waiting for the clean-up.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

log = logging.getLogger("ftrun.sweeper")


class StopSignals:
    """``with StopSignals() as stop:`` ... ``stop.signum`` is the first signal received, or None."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._request_stop)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _request_stop(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop waiting for the clean-up
            raise KeyboardInterrupt(f"signal {signum}")
        log.warning("Signal %d: stopping the sweep after the current step", signum)
        self.signum = signum
