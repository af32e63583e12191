"""``ftrun [overrides]`` (or ``python -m ftrun``): compose a run from ftrun/conf and train it.

The entrypoint only composes and calls :func:`ftrun.train.run`; it returns the
objective so a ``-m`` sweep can optimize it. Short spellings (``lr=``) are
rewritten to their home keys (``optimizer.lr=``) before Hydra reads the command
line. A user mistake (``ConfigError``) ends with its message and exit status 2,
not a traceback; a run that diverged (NaN loss or gradient, :mod:`ftrun.divergence`)
with its message and exit status 3 (the map is :mod:`ftrun.exit_status`, shared with
the sweep's warm workers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftrun.allocator import reexec

if __name__ == "__main__" or Path(sys.argv[0]).name == "ftrun":
    reexec()  # before hydra and the rest import: the preloaded process imports them once (ftrun.allocator)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ftrun.compose import CONF_PATH, CONFIG_NAME, discard_unstarted_run_dir, exit_2_on_compose_error, task_started  # noqa: E402,E501
from ftrun.config import ConfigError, canonical_overrides, register_configs, validate  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=CONFIG_NAME)
def _run(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    task_started()  # composed: a crash from here on is Hydra's to report
    hc = HydraConfig.get()
    try:  # the config's own mistakes before torch and transformers import (seconds sooner)
        validate(cfg)
    except ConfigError as e:
        _refuse(e, hc)
    from ftrun import collector
    from ftrun.unused_libraries import hide, unused

    hide(unused(cfg))  # before peft, accelerate and datasets import them (ftrun.unused_libraries)
    collector.pause()  # until training starts: imports and set-up make objects that live as long as the run
    from ftrun.divergence import Diverged
    from ftrun.exit_status import exit_status
    from ftrun.signals import Stopped, stop_on_signals
    from ftrun.train import run

    stop_on_signals()
    try:
        objective = run(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
        _end_distributed()  # after a run that ended well only: a rank that failed may leave peers mid-collective
        return objective
    except Stopped as e:  # the MLflow run ends KILLED (its tracker's, or here if it was still setting up)
        from ftrun.tracking import end_interrupted_run

        end_interrupted_run(f"stopped by signal {e.signum}")
        sys.exit(exit_status(e))
    except ConfigError as e:
        _refuse(e, hc)
    except Diverged as e:  # already logged, with result.json and the MLflow run marked (ftrun.exit_status: 3)
        sys.exit(exit_status(e))
    finally:
        collector.resume()  # a run that ended before training (a bad data file) leaves the collector as it was


def _end_distributed() -> None:
    """Under torchrun or accelerate launch: close the process group before the interpreter exits (a gloo rank
    left to shutdown can abort with "terminate called without an active exception"; CI saw it once)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _refuse(e: ConfigError, hc) -> None:
    from ftrun.exit_status import exit_status

    status = exit_status(e)  # logs the message
    discard_unstarted_run_dir(hc.runtime.output_dir, f"{hc.job.name}.log")  # refused: nothing left behind
    sys.exit(status)


def main() -> None:
    """The ``ftrun`` console script; ``ftrun board`` serves the web board (:mod:`ftrun.board`)."""
    reexec()  # once, with jemalloc preloaded where the machine has it (done already by `python -m ftrun`)
    if sys.argv[1:2] == ["board"]:
        from ftrun.board.__main__ import main as board

        return board(sys.argv[2:])
    from ftrun.terminal import verbosity_arguments

    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    sys.argv[1:] = canonical_overrides(verbosity_arguments(sys.argv[1:]), keep_sweeps=multirun)
    exit_2_on_compose_error(_run)  # an unknown key or option, a wrong type: exit 2, as ConfigError


if __name__ == "__main__":
    main()
