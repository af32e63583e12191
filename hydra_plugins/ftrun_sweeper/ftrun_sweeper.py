"""The Hydra side of the ftrun sweeper: a thin :class:`Sweeper` and its ConfigStore entry.

Hydra instantiates a sweeper only when its class is defined in a module under the
``hydra_plugins`` namespace package, so this class lives here; everything it does
is in :mod:`sweeper.sweep` (the search space too: :func:`sweeper.space.sweep_space`),
imported when a sweep actually starts (``--help`` and plain runs never import optuna).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeper.config import FtrunSweeperConf

ConfigStore.instance().store(group="hydra/sweeper", name="ftrun", node=FtrunSweeperConf, provider="ftrun")


class FtrunSweeper(Sweeper):
    """Optuna sweeps with asynchronous slots, pruning across processes, resume and MLflow nesting."""

    def __init__(self, **conf: Any) -> None:
        self.conf = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                     for k, v in conf.items()}
        self.config: Optional[DictConfig] = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config

    def sweep(self, arguments: List[str]) -> Any:
        from ftrun.config import ConfigError
        from ftrun.exit_status import EXIT_CONFIG_ERROR
        from sweeper.auto import AutoSpaceError
        from sweeper.space import SearchSpaceError
        from sweeper.study import SweepConfigError
        from sweeper.sweep import run_sweep

        from sweeper.setting_checks import check_settings

        assert self.config is not None and self.hydra_context is not None

        def job_cfg(fixed: List[str]) -> DictConfig:  # the run's config with the sweep's fixed overrides
            return self.hydra_context.config_loader.load_sweep_config(self.config, fixed)

        try:
            check_settings(self.conf, arguments)  # every hydra.sweeper setting and sweep expression, before any study
            return run_sweep(self.conf, arguments, job_cfg, self.config.hydra.sweep.dir, _entry_args(self.config))
        except (SweepConfigError, SearchSpaceError, AutoSpaceError, ConfigError) as e:
            # a setting to fix: its message, exit 2, no traceback
            logging.getLogger("sweeper").error("%s", e)
            sys.exit(EXIT_CONFIG_ERROR)


def _entry_args(config: DictConfig) -> List[str]:
    """``--config-name`` / ``--config-dir`` the user gave, so each trial composes the same config."""
    args: List[str] = []
    name = config.hydra.job.get("config_name")
    if name and name != "config":
        args += ["--config-name", str(name)]
    for source in config.hydra.runtime.get("config_sources", []):
        if source.get("provider") == "command-line" and str(source.get("schema")) == "file":
            args += ["--config-dir", str(source.get("path"))]
    return args
