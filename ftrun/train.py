"""One fine-tuning run, top to bottom: checks -> the stage's recipe (data -> model -> trainer -> train -> report).

Every stage, sft included, is a recipe in :mod:`ftrun.stages`; transformers'
Trainer (or TRL's) owns the loop. :func:`run` returns the objective
(``cfg.objective``) so that a sweep can optimize it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ftrun.config import ConfigError, resolved, training_differences, validate, validate_device
from ftrun.contract import RESOLVED_CONFIG, RESULT_FILE  # noqa: F401  (RESULT_FILE: what run() writes last)
from ftrun.data import check_stage_data
from ftrun.config.model_dir import require_model_files
from ftrun.fit import (checkpoint_to_resume, exact_match,  # noqa: F401  (exact_match, training_arguments: tests)
                       quiet_libraries, start_phases, training_arguments)

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides: Optional[list] = None) -> float:
    """Train one run into ``run_dir`` and return its objective.

    Everything that can be checked without loading anything is checked first:
    the config, the resume, the data's kind against the stage and the eval split
    an ``eval_*`` objective needs. Then the stage's recipe (:mod:`ftrun.stages`)
    runs: data -> model -> trainer -> train -> evaluate -> save -> report.
    """
    start_phases()
    validate(cfg)
    require_model_files(cfg.model)  # a local model.path holds a tokenizer and weights (ftrun.config.model_dir)
    cfg = resolved(cfg)  # from here on plain values: the name and objective fixed, choices as strings
    run_dir = Path(run_dir)
    check_resume(cfg, run_dir)  # the wrong checkpoint, or an occupied run dir, is refused before anything loads
    check_stage_data(cfg)  # data that does not fit the stage, or no eval split for the objective
    validate_device(cfg)  # fp16 on a CPU, a missing optional package: refused before the run dir is written
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_resolved_config(cfg, run_dir)
    log.info("Run '%s' (stage %s) in %s", cfg.name, cfg.stage.name, run_dir)
    quiet_libraries()
    from ftrun.estimate import log_estimate  # issue 16: one line, the estimated peak memory per device

    log_estimate(cfg)
    from ftrun.stages import RECIPES

    return RECIPES[cfg.stage.name](cfg, run_dir, overrides)  # e.g. ftrun.stages.sft.run


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse to resume a checkpoint whose run trained with other settings (``resume=force``
    resumes it anyway), and to write into a run directory that holds checkpoints (``resume=never``).

    Reads only ``config_resolved.yaml``: nothing loads.
    """
    checkpoint = checkpoint_to_resume(cfg, run_dir)  # raises on resume=never in an occupied run dir
    old_file = Path(run_dir) / RESOLVED_CONFIG
    if checkpoint is None or cfg.resume == "force" or not old_file.is_file():
        return
    from omegaconf import OmegaConf

    diff = training_differences(OmegaConf.to_container(OmegaConf.load(old_file)), cfg)
    if diff:
        lines = [f"{key}: the checkpoint's run had {then}, this run has {now}" for key, (then, now) in diff.items()]
        raise ConfigError(f"resume={cfg.resume}: {checkpoint} was trained with other settings:\n  "
                          + "\n  ".join(lines)
                          + "\n  use the same settings, resume=force to resume it anyway, "
                            "or resume=never (with another name=) for a new run")


# ---------------------------------------------------------------------------
# helpers


def _write_resolved_config(cfg, run_dir: Path) -> None:
    """config_resolved.yaml, also with tracking off: export, predict, chat and resume read it."""
    from omegaconf import OmegaConf

    from ftrun.config import to_container

    (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(to_container(cfg)))
