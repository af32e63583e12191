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
stage to its recipe function in :data:`RECIPES` (a plain mapping, so go-to-definition
reaches it). Each recipe builds its data through
:mod:`ftrun.data` first (:func:`ftrun.stages.common.prepare_data`: bad data
fails before any model loads), loads the model with :mod:`ftrun.model`, records
the run in MLflow and ends in :func:`ftrun.fit.train_and_report`, which
writes ``result.json`` and returns the objective.
"""

from __future__ import annotations

from typing import Callable, Dict

from ftrun.stages import dpo, kto, ppo, pt, rm, sft  # each imports torch and the trainers inside its run()

RECIPES: Dict[str, Callable[..., float]] = {
    "pt": pt.run, "sft": sft.run, "rm": rm.run, "dpo": dpo.run, "kto": kto.run, "ppo": ppo.run,
}
"""Stage name -> recipe: ``recipe(cfg, run_dir, overrides) -> objective``."""
