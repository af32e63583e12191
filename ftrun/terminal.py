"""How ftrun talks to a person at a terminal: how chatty to be, whether a live display fits, and
log lines kept readable while one (a run's progress bar, a sweep's table) is on screen.

Verbosity follows the ecosystem: ``--quiet`` / ``-q`` is Hydra's ``hydra.job_logging.root.level=WARNING``
(and transformers' ``TRANSFORMERS_VERBOSITY=error``); ``--verbose`` / ``-v`` is Hydra's ``hydra.verbose=ftrun``
(ftrun's DEBUG lines) and ``TRANSFORMERS_VERBOSITY=info``. A ``TRANSFORMERS_VERBOSITY`` already set wins.

The display mode follows from the logging level and where log lines go (Hydra's console handler):
``quiet`` (level above INFO: no progress display), ``live`` (a terminal: one live display redrawn in place),
``lines`` (a file, a pipe, CI, SLURM: plain timestamped lines, never a carriage return).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

QUIET_FLAGS = ("--quiet", "-q")
VERBOSE_FLAGS = ("--verbose", "-v")
QUIET_OVERRIDES = ("hydra.job_logging.root.level=WARNING", "hydra.hydra_logging.root.level=WARNING")
VERBOSE_OVERRIDES = ("hydra.verbose=ftrun",)
FILE_ONLY = {"file_only": True}
"""``log.info(..., extra=FILE_ONLY)``: a line for the run's log file that the terminal does not show
(a live display shows the same thing in place)."""


def clock(seconds: Optional[float]) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def number(v) -> str:
    """A logged value, short: 4 significant digits for floats."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def verbosity_arguments(argv: Sequence[str]) -> List[str]:
    """The command line with ``--quiet`` / ``--verbose`` turned into the Hydra overrides they stand for
    (and ``TRANSFORMERS_VERBOSITY`` set for transformers, unless the caller set it)."""
    out = [a for a in argv if a not in QUIET_FLAGS + VERBOSE_FLAGS]
    if any(a in QUIET_FLAGS for a in argv):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        out += QUIET_OVERRIDES
    elif any(a in VERBOSE_FLAGS for a in argv):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        out += VERBOSE_OVERRIDES
    return out


def console_handlers() -> List[logging.StreamHandler]:
    """The root logger's handlers that write to a stream (Hydra's ``console``), not to a file."""
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def display_mode() -> str:
    """``quiet``, ``live`` or ``lines`` (see the module's docstring)."""
    if logging.getLogger("ftrun").getEffectiveLevel() > logging.INFO:
        return "quiet"
    streams = [h.stream for h in console_handlers()] or [sys.stdout]
    tty = all(getattr(s, "isatty", lambda: False)() for s in streams)
    return "live" if tty and os.environ.get("TERM") != "dumb" else "lines"


class _ConsoleFilter(logging.Filter):
    """Keeps ``FILE_ONLY`` lines off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


_FILTER = _ConsoleFilter()


def keep_file_only_lines_off_console(live: bool = False) -> None:
    """Install the filter on the console handlers (idempotent; Hydra configures them per job) when a log file
    gets the lines; without one (a sweep's warm worker, whose console is the trial's ``trial.log``) the console
    keeps them all, unless a live display shows them in place (``live``)."""
    if not live and not any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
        return
    for h in console_handlers():
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


@contextmanager
def live_display(renderable=None, progress=None) -> Iterator[object]:
    """Show a rich live display (a ``Progress``, or ``renderable`` in a ``Live``) until the block ends.

    Log lines print above it: the console handlers write through the display's console for the
    duration, as ``print`` does (rich redirects stdout and stderr).
    """
    from rich.live import Live

    handlers = console_handlers()
    originals: List[Tuple[logging.StreamHandler, object]] = [(h, h.stream) for h in handlers]
    real = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    display = progress if progress is not None else Live(renderable, refresh_per_second=4, transient=False)
    display.start()
    try:
        for h, stream in originals:
            name = real.get(id(stream))
            if name:  # now rich's proxy, which prints whole lines above the display
                h.setStream(getattr(sys, name))
        yield display
    finally:
        for h, stream in originals:
            h.setStream(stream)
        display.stop()
