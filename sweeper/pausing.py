"""The sweep's pause-and-promote steps (``hydra.sweeper.pruner=promotion``, :mod:`sweeper.promotion`): a trial that
reaches a rung and is not promoted yet pauses (RUNNING in the study, its checkpoint kept); the rule promotes it
later and it resumes from that checkpoint in its same Optuna trial and MLflow run; at the sweep's end a trial still
paused is recorded PRUNED and its checkpoints deleted.

:class:`PauseAndPromote` is a part of :class:`sweeper.sweep.Sweep` (its ``study``, ``running``, ``parent``,
``view`` and ``_launch``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ftrun.contract import ATTR_FAIL_REASON, ATTR_PAUSED_AT, ATTR_PAUSED_AT_STEP, ATTR_PROMOTIONS, ATTR_PRUNED
from ftrun.contract import ATTR_TRIAL_DIR, TAG_PROMOTIONS
from sweeper import stale_trials
from sweeper.slots import Slot

log = logging.getLogger("ftrun.sweeper")

PAUSED = "paused"  # result.json's status for a trial that paused at a rung (ftrun.fit._report_pause)


def earlier_seconds(trial) -> float:
    """Trial-seconds a promoted trial spent before its last pause (0 for a trial that never paused)."""
    return float(trial.user_attrs.get("duration_s") or 0.0) if trial.user_attrs.get(ATTR_PROMOTIONS) else 0.0


class PauseAndPromote:
    """Pause a trial at a rung, promote a paused one, close those left paused."""

    def _pause(self, r, result: dict) -> None:
        """The trial paused at a rung: it stays RUNNING in the study, waiting to be promoted."""
        duration = r.seconds() + earlier_seconds(r.trial)  # in a pack: its share of the pack's time
        at = int(result.get("paused_at") or 0)
        for key, value in {ATTR_PAUSED_AT: at, ATTR_PAUSED_AT_STEP: result.get(ATTR_PAUSED_AT_STEP),
                           "duration_s": duration}.items():
            r.trial.set_user_attr(key, value)
        value = stale_trials.stored_trial(self.study, r.trial).intermediate_values.get(at)
        log.info("Trial %d paused at the rung of %d examples (%s=%s), after %.0f s; waiting to be promoted",
                 r.trial.number, at, self.s.objectives[0], "n/a" if value is None else f"{value:.4g}", duration)
        self.view.trial_finished(r.trial.number, PAUSED.upper(), value, duration, f"paused at {at} examples")
        if self.parent:
            self.parent.tag_child(r.trial_dir, r.trial, PAUSED.upper(), None, overrides=r.overrides)

    def _promotable(self) -> bool:
        """Whether the promotion rule would promote a paused trial now (it goes before new trials)."""
        from sweeper import promotion

        return isinstance(self.study.pruner, promotion.PromotionPruner) and self.study.pruner.next_promotion(
            self.study, exclude={r.trial.number for r in self.running.values()}) is not None

    def _promote(self, slot: Slot, last_resort: bool = False) -> bool:
        """Resume the paused trial the promotion rule picks, in ``slot``, from its checkpoint; False when none.
        ``last_resort``: the sweep would end here; with no trial trained to the end, take the best paused one."""
        from sweeper import promotion

        if not isinstance(self.study.pruner, promotion.PromotionPruner):
            return False
        frozen = self.study.pruner.next_promotion(self.study, exclude={r.trial.number for r in self.running.values()})
        if frozen is None and last_resort and not self._others_running():
            frozen = promotion.last_resort(self.study)
        if frozen is None:
            return False
        import optuna

        trial = optuna.trial.Trial(self.study, stale_trials.trial_id(frozen))
        at = frozen.user_attrs[ATTR_PAUSED_AT]
        promotions = int(frozen.user_attrs.get(ATTR_PROMOTIONS) or 0) + 1
        trial.set_user_attr(ATTR_PAUSED_AT, None)
        trial.set_user_attr(ATTR_PROMOTIONS, promotions)
        trial_dir = Path(frozen.user_attrs[ATTR_TRIAL_DIR])
        extra = [e for e in frozen.user_attrs.get("extra", []) if not e.startswith("resume=")] + ["resume=auto"]
        log.info("Trial %d promoted from the rung of %d examples: resuming it from %s", frozen.number, at,
                 trial_dir)
        self._launch(slot, trial=trial, extra=extra, trial_dir=trial_dir, promoted=True)
        self.view.trial_started(frozen.number, frozen.params, self.running[frozen.number].overrides)
        if self.parent:
            self.parent.tag_child(trial_dir, trial, "RUNNING", None, extra_tags={TAG_PROMOTIONS: str(promotions)})
        return True

    def _close_paused(self) -> None:
        """The sweep is over: a trial still paused can no longer be promoted. Record it PRUNED at its rung and
        delete its checkpoints (its result.json, log and MLflow run stay)."""
        import shutil

        import optuna

        from ftrun.config import last_checkpoint
        from sweeper.promotion import paused_trials

        for frozen in paused_trials(self.study.get_trials(deepcopy=False)):
            trial = optuna.trial.Trial(self.study, stale_trials.trial_id(frozen))
            at = frozen.user_attrs[ATTR_PAUSED_AT]
            trial.set_user_attr(ATTR_PRUNED, True)
            trial.set_user_attr(ATTR_FAIL_REASON, f"paused at {at} examples and not promoted before the sweep ended")
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            trial_dir = Path(frozen.user_attrs.get(ATTR_TRIAL_DIR, ""))
            while frozen.user_attrs.get(ATTR_TRIAL_DIR) and last_checkpoint(trial_dir) is not None:
                shutil.rmtree(last_checkpoint(trial_dir))
            log.info("Trial %d: paused at %d examples and never promoted; recorded PRUNED, checkpoints deleted",
                     frozen.number, at)
            if self.parent:
                self.parent.tag_child(trial_dir, trial, "PRUNED", f"paused at {at} examples, not promoted",
                                      end_status="FINISHED")
