"""Exit statuses of a run, and the one map from how a run ended to its status.

``python -m ftrun`` (:mod:`ftrun.__main__`) and a warm sweep worker (:mod:`sweeper.worker`) both
turn a run's exception into its status here, so a trial ends the same way whichever ran it.
"""

from __future__ import annotations

import logging
import traceback

EXIT_OK = 0
"""The run finished (result.json holds its objective)."""
EXIT_FAILED = 1
"""Any other exception: a bug or a broken environment; its traceback is in the log."""
EXIT_CONFIG_ERROR = 2
"""A user mistake (``ConfigError``, a sweep setting): one message naming the override to fix, no traceback."""
EXIT_DIVERGED = 3
"""The loss or a gradient stopped being finite (:mod:`ftrun.divergence`); result.json says ``status: diverged``."""


def exit_status(error: BaseException) -> int:
    """The status a run that raised ``error`` ends with; logs what the user needs to see: a
    ``ConfigError``'s message, a traceback only for an unexpected exception (a ``Diverged`` run has
    logged its reason already)."""
    from ftrun.config import ConfigError
    from ftrun.divergence import Diverged

    if isinstance(error, ConfigError):
        logging.getLogger("ftrun").error("%s", error)
        return EXIT_CONFIG_ERROR
    if isinstance(error, Diverged):
        return EXIT_DIVERGED
    from ftrun.signals import Stopped

    if isinstance(error, Stopped):  # SIGTERM/SIGINT (the board's Stop, scancel): the shell's 128 + signal
        logging.getLogger("ftrun").warning("Stopped by signal %d", error.signum)
        return 128 + error.signum
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else EXIT_FAILED
    traceback.print_exception(type(error), error, error.__traceback__)
    return EXIT_FAILED
