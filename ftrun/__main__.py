"""``ftrun [overrides]`` (or ``python -m ftrun``): compose a run from ftrun/conf and train it.

The entrypoint only composes and calls :func:`ftrun.train.run`; it returns the
objective so a ``-m`` sweep can optimize it. Short spellings (``lr=``) are
rewritten to their home keys (``optimizer.lr=``) before Hydra reads the command
line. A user mistake (``ConfigError``) ends with its message and exit status 2,
not a traceback; a run that diverged (NaN loss or gradient, :mod:`ftrun.divergence`)
with its message and exit status 3.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ftrun.compose import CONF_PATH, CONFIG_NAME
from ftrun.config import ConfigError, canonical_overrides, register_configs

log = logging.getLogger("ftrun")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=CONFIG_NAME)
def _run(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from ftrun.divergence import EXIT_DIVERGED, Diverged
    from ftrun.signals import Stopped, stop_on_signals
    from ftrun.train import run

    hc = HydraConfig.get()
    stop_on_signals()
    try:
        return run(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except Stopped as e:  # the MLflow run ends KILLED (its tracker's, or here if it was still setting up)
        from ftrun.tracking import end_interrupted_run

        end_interrupted_run(f"stopped by signal {e.signum}")
        log.warning("Stopped by signal %d", e.signum)
        sys.exit(128 + e.signum)
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)
    except Diverged:  # already logged, with result.json and the MLflow run marked
        sys.exit(EXIT_DIVERGED)


def main() -> None:
    """The ``ftrun`` console script; ``ftrun board`` serves the web board (:mod:`ftrun.board`)."""
    if sys.argv[1:2] == ["board"]:
        from ftrun.board.__main__ import main as board

        return board(sys.argv[2:])
    from ftrun.terminal import verbosity_arguments

    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    sys.argv[1:] = canonical_overrides(verbosity_arguments(sys.argv[1:]), keep_sweeps=multirun)
    _run()


if __name__ == "__main__":
    main()
