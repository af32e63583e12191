"""``python -m ftrun.estimate``: one message and exit status 2 for a mistake (:func:`ftrun.cli.main_guard`)."""

import sys

from ftrun.cli import main_guard
from ftrun.estimate.cli import main

sys.exit(main_guard(main))
