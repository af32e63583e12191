"""The training stages, one readable recipe each: data -> model -> trainer -> train -> evaluate -> save -> report.

==========  ==========================================  =============================
stage       recipe                                      returns (default objective)
==========  ==========================================  =============================
``pt``      :mod:`ftrun.stages.pt`: raw text, packed     eval_loss
``sft``     :mod:`ftrun.stages.sft`: Trainer             eval_loss
``rm``      :mod:`ftrun.stages.rm`: RewardTrainer        eval_accuracy (pairwise)
``dpo``     :mod:`ftrun.stages.dpo`: DPOTrainer          eval_rewards/accuracies
``kto``     :mod:`ftrun.stages.kto`: KTOTrainer          eval_rewards/margins
``ppo``     :mod:`ftrun.stages.ppo`: GRPOTrainer         reward_mean
==========  ==========================================  =============================

:func:`ftrun.train.run` checks the config and the data's kind, then hands every
stage to :func:`run_stage`. Each recipe builds its data through
:mod:`ftrun.data` first (:func:`ftrun.stages.common.prepare_data`: bad data
fails before any model loads), loads the model with :mod:`ftrun.model`, records
the run in MLflow and ends in :func:`ftrun.trainer.train_and_report`, which
writes ``result.json`` and returns the objective.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

RECIPES = {name: f"ftrun.stages.{name}" for name in ("pt", "sft", "rm", "dpo", "kto", "ppo")}


def run_stage(cfg, run_dir: Path, overrides: Optional[list] = None) -> float:
    """Run ``cfg.stage.name``'s recipe into ``run_dir`` and return its objective."""
    recipe = importlib.import_module(RECIPES[cfg.stage.name])
    return recipe.run(cfg, run_dir, overrides)
