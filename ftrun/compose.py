"""The one way a config is composed from overrides, for every entry point.

``ftrun`` / ``python -m ftrun`` compose through ``@hydra.main`` with the same
search path (:data:`CONF_PATH`) and the same alias rewriting
(:func:`ftrun.config.canonical_overrides`); everything else that needs the config
a run would get (predict, data_stats, analysis best, the benchmarks, the tests, a
sweep's warm worker) calls :func:`compose`.

The configs ship inside the package (``ftrun/conf``), found through Hydra's
``pkg://`` search path, so an installed wheel works from any directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ftrun.contract import COMPOSE_ERRORS_ENV as _OURS  # HYDRA_FULL_ERROR set here, not by the user

CONF_PACKAGE = "ftrun.conf"
CONF_PATH = f"pkg://{CONF_PACKAGE}"
CONFIG_NAME = "config"


def conf_dir() -> Path:
    """The folder that holds the shipped configs (``config.yaml`` and one folder per group)."""
    return Path(__file__).resolve().parent / "conf"


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False,
            config_dir: Optional[Path] = None, config_name: str = CONFIG_NAME):
    """The config ``ftrun <overrides>`` would run, as a DictConfig (not yet validated: call
    :func:`ftrun.config.validate`).

    ``overrides`` use the command line's syntax (``lr=1e-4``, ``method=qlora``,
    ``+experiment=best``); short spellings are rewritten to their home keys.
    ``return_hydra_config`` keeps the ``hydra`` node (the run directory, the sweeper's
    settings). ``config_dir`` composes from another folder of configs instead of the
    shipped ones. A mistake (an unknown key or option, a value of the wrong type)
    raises :class:`ftrun.config.ConfigError` naming the override.

    Works inside a running Hydra app too (it saves and restores Hydra's global state).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ftrun.config import ConfigError, canonical_overrides, register_configs

    register_configs()
    overrides = canonical_overrides(overrides)
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        if config_dir is not None:
            init = initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3")
        else:
            init = initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3")
        with init:
            return hydra_compose(config_name=config_name, overrides=overrides,
                                 return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(compose_error(e)) from None
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def compose_error(e: BaseException) -> str:
    """Hydra's or OmegaConf's message, without the hint about HYDRA_FULL_ERROR."""
    lines = [ln for ln in str(e).splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    cause = e.__cause__
    if cause is not None and str(cause).splitlines() and str(cause).splitlines()[0] not in lines:
        lines.append(str(cause).splitlines()[0])
    return "invalid configuration:\n  " + "\n  ".join(lines)


_FULL_ERROR = "HYDRA_FULL_ERROR"


def exit_2_on_compose_error(hydra_app) -> None:
    """Call a ``@hydra.main`` app so that a mistake Hydra finds while composing (an unknown key or option,
    a value of the wrong type, an override it cannot parse) ends like every other user mistake: one
    message and exit status 2. Hydra itself prints these and exits 1, the status of a crash.

    Hydra re-raises instead of printing when ``HYDRA_FULL_ERROR=1``; it is set here for the composition
    and dropped again by :func:`task_started`, so a crash inside the run keeps Hydra's own report. A user
    who sets ``HYDRA_FULL_ERROR=1`` keeps Hydra's full traceback for everything.
    """
    import os
    import sys

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get(_FULL_ERROR) == "1" and _OURS not in os.environ:
        return hydra_app()
    os.environ[_FULL_ERROR] = os.environ[_OURS] = "1"
    try:
        return hydra_app()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {compose_error(e)}", file=sys.stderr)
        sys.exit(2)


def task_started() -> None:
    """The config is composed: from here on Hydra reports a crash as usual (:func:`exit_2_on_compose_error`)."""
    import os

    if os.environ.pop(_OURS, None) is not None:
        os.environ.pop(_FULL_ERROR, None)


def discard_unstarted_run_dir(run_dir, job_log: str) -> None:
    """Remove the run directory Hydra made for a run refused before it started: nothing in it but Hydra's
    ``.hydra/`` and the job's own log ``job_log`` (the message was printed too). A directory holding anything
    else (a checkpoint to resume, a sweep trial's log) is left alone; so is its name folder unless empty."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.name not in (".hydra", job_log) for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()  # the run name's folder, only when no other run is in it
    except OSError:
        pass
