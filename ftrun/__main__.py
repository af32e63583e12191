"""``python -m ftrun [overrides]``: compose a run from conf/ and train it.

The entrypoint only composes and calls :func:`ftrun.train.run`; it returns the
objective so a ``-m`` sweep can optimize it. A user mistake (``ConfigError``)
ends with its message and exit status 2, not a traceback; a run that diverged (NaN loss or
gradient, :mod:`ftrun.divergence`) with its message and exit status 3.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ftrun.config import ConfigError, register_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("ftrun")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from ftrun.divergence import EXIT_DIVERGED, Diverged
    from ftrun.train import run

    hc = HydraConfig.get()
    try:
        return run(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except ConfigError as e:
        log.error("%s", e)
        sys.exit(2)
    except Diverged:  # already logged, with result.json and the MLflow run marked
        sys.exit(EXIT_DIVERGED)


if __name__ == "__main__":
    main()
