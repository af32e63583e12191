"""Successive halving from the first evaluation: ``hydra.sweeper.pruner={name: successive_halving, min_resource:
first_evaluation, reduction_factor: 2}``.

Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner` takes its first rung (``min_resource``) as a number of
steps, or ``auto``: a hundredth of the first complete trial's steps, which comes late (no trial is stopped before
one has finished) and falls between evaluations that the sweeper reports in examples seen. A sweep's natural first
rung is its first evaluation, whatever the trial's batch size or eval cadence: ``first_evaluation`` is the fewest
examples any trial of the study has reported at (as :class:`sweeper.promotion.PromotionPruner`'s ``auto``). Every
other argument and the rule itself are Optuna's. (Tried as sweep=auto's pruner and withdrawn: README, "A candidate
that did not carry over".)
"""

from __future__ import annotations

from typing import Union

import optuna

FIRST_EVALUATION = "first_evaluation"


class SuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving; ``min_resource`` also takes ``first_evaluation``."""

    def __init__(self, min_resource: Union[str, int] = "auto", reduction_factor: int = 4,
                 min_early_stopping_rate: int = 0, bootstrap_count: int = 0) -> None:
        if isinstance(min_resource, str) and min_resource not in ("auto", FIRST_EVALUATION):
            raise ValueError(f"min_resource={min_resource!r}: give a step count >= 1, auto or {FIRST_EVALUATION}")
        self._from_first_evaluation = min_resource == FIRST_EVALUATION
        super().__init__(min_resource="auto" if self._from_first_evaluation else min_resource,
                         reduction_factor=reduction_factor, min_early_stopping_rate=min_early_stopping_rate,
                         bootstrap_count=bootstrap_count)

    def prune(self, study: "optuna.study.Study", trial: "optuna.trial.FrozenTrial") -> bool:
        if self._from_first_evaluation:
            from sweeper.promotion import first_evaluation

            first = first_evaluation([*study.get_trials(deepcopy=False), trial])
            if first is None:
                return False
            self._min_resource = first
        return super().prune(study, trial)
