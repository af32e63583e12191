"""What a trial in a warm worker gets in place of a fresh process (:mod:`sweeper.worker` runs one trial at a time
in it, :mod:`sweeper.pack_process` a pack): its config composed from its command line as ``python -m ftrun`` would,
its own log file and environment, and no state carried over from the previous trial."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Dict, List


@contextlib.contextmanager
def trial_process(log_path: str, env: Dict[str, str]):
    """What a fresh trial process would have, for the duration: stdout and stderr into ``log_path``, the trial's
    environment variables, and no state carried over from the previous trial; all restored after."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    saved = _redirect(log_fd)
    env_before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _reset_process_state()
        yield
    finally:
        _restore(saved)
        os.close(log_fd)
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compose_trial(args: List[str]):
    """(config, run dir, task overrides) from a trial's command-line arguments, composed as
    ``ftrun <args>`` would (:func:`ftrun.compose.compose`)."""
    from ftrun.compose import CONFIG_NAME, compose

    config_name, config_dirs, overrides, run_dir = CONFIG_NAME, [], [], None
    it = iter(args)
    for a in it:
        if a == "--config-name":
            config_name = next(it)
        elif a == "--config-dir":
            config_dirs.append(next(it))
        elif a.startswith("hydra.run.dir="):
            run_dir = Path(a.split("=", 1)[1])
        else:
            overrides.append(a)
    if run_dir is None:
        raise ValueError("a warm trial needs hydra.run.dir=<trial dir>")
    # --config-dir adds a folder to the search path, as Hydra's command line does
    extra = [f"hydra.searchpath=[{','.join('file://' + d for d in config_dirs)}]"] if config_dirs else []
    cfg = compose([*overrides, *extra], config_name=config_name)
    return cfg, run_dir, overrides


def _redirect(fd: int):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return saved


def _restore(saved) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


def _reset_process_state() -> None:
    """What a fresh process would not carry over from the previous trial."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision etc. may differ per trial
        GradientState._reset_state()
    except ImportError:  # pragma: no cover
        pass
    try:  # the peak resident memory ("high water mark") that result.json reports is per trial
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
