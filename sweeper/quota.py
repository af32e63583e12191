"""The trial quota: exactly ``n_trials`` counted trials in the study, whichever hosts ran them.

A counted trial is COMPLETE, PRUNED or RUNNING (FAIL too under ``sampler: grid``, whose points are
each tried once). Repeats of a trained configuration (``duplicate_of``) and trials asked for past
n_trials (``surplus``) are kept apart and do not count.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Optional

from ftrun.contract import ATTR_FAIL_REASON, ATTR_PAUSED_AT, ATTR_SURPLUS, TAG_RETRY_OF
from sweeper import stale_trials

log = logging.getLogger("ftrun.sweeper")


class TrialQuota:
    """How many trials the study still wants, and a trial to run when it wants one."""

    def __init__(self, study, n_trials: int, grid: bool):
        self.study, self.n_trials, self.grid = study, n_trials, grid

    def counts(self) -> Dict[str, int]:
        """Trials by state; repeats (DUPLICATE) and trials past n_trials (SURPLUS) counted apart."""
        counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "DUPLICATE", "SURPLUS")}
        for t in self.study.get_trials(deepcopy=False):
            state = ("DUPLICATE" if "duplicate_of" in t.user_attrs else
                     "SURPLUS" if ATTR_SURPLUS in t.user_attrs else t.state.name)
            counts[state] = counts.get(state, 0) + 1
        return counts

    def need(self) -> int:
        """Trials still to start: total wanted minus finished minus running (here or elsewhere)."""
        c = self.counts()
        done = c["COMPLETE"] + c["PRUNED"] + (c["FAIL"] if self.grid else 0)
        return self.n_trials - done - c["RUNNING"]

    def counted(self, t) -> bool:
        """Whether trial ``t`` counts toward n_trials now (running ones included)."""
        if "duplicate_of" in t.user_attrs or ATTR_SURPLUS in t.user_attrs:
            return False
        return t.state.name in ("COMPLETE", "PRUNED", "RUNNING") or (self.grid and t.state.name == "FAIL")

    def others_running(self, mine) -> bool:
        """Whether the study has RUNNING trials whose numbers are not in ``mine`` (paused ones aside: they wait
        for a promotion, with no process)."""
        from optuna.trial import TrialState

        return any(t.number not in mine and t.user_attrs.get(ATTR_PAUSED_AT) is None
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def ask(self):
        """A new trial from the study, or None when other sweepers took the last of n_trials meanwhile.

        Sweepers on several hosts each see room for one more trial and ask at the same moment; the
        storage numbers their trials in order, so the rule "a trial runs only if fewer than n_trials
        counted trials have lower numbers" lets exactly the first ones run, whatever each host saw.
        """
        from optuna.trial import TrialState

        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for study.optimize;
            warnings.simplefilter("ignore")  # with ask-and-tell the sweeper records them itself
            trial = self.study.ask()
        stale_trials.beat(self.study, trial)  # at once: a trial without a heartbeat is never found stale
        before = sum(1 for t in self.study.get_trials(deepcopy=False) if t.number < trial.number and self.counted(t))
        if before < self.n_trials:
            return trial
        trial.set_user_attr(ATTR_SURPLUS, True)
        trial.set_user_attr(ATTR_FAIL_REASON, f"not run: other sweepers had already started the last of "
                                              f"n_trials={self.n_trials}")
        frozen = stale_trials.stored_trial(self.study, trial)
        fixed = frozen.system_attrs.get("fixed_params") or frozen.params
        self.study.tell(trial, state=TrialState.FAIL)
        if fixed:  # an enqueued configuration (or a retry) goes back into the queue
            attrs = {k: v for k, v in trial.user_attrs.items() if k not in (ATTR_SURPLUS, ATTR_FAIL_REASON)}
            self.study.enqueue_trial(fixed, user_attrs=attrs)
        log.info("Trial %d not needed: the study already has %d trials; waiting for the others", trial.number,
                 self.n_trials)
        return None

    def trained(self, params: Dict[str, Any]):
        """A COMPLETE trial (not itself a repeat) with exactly these parameters, if any."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params and "duplicate_of" not in t.user_attrs:
                return t
        return None

    def answer_repeat(self, trial, params: Dict[str, Any], busy, repeats: int) -> Optional[str]:
        """When ``trial`` proposes a configuration already trained (told the known value) or now training in
        another slot (``busy``: that trial; told FAIL), record it as a repeat and say why; else None."""
        from optuna.trial import TrialState

        if trial.user_attrs.get(TAG_RETRY_OF) is not None:
            return None
        same = self.trained(params) if repeats < max(100, 10 * self.n_trials) else None
        if same is not None:
            # training is seeded, so the same configuration gives the same result: tell the
            # sampler the known value instead of spending a slot (it does not count in n_trials)
            trial.set_user_attr("duplicate_of", same.number)
            self.study.tell(trial, values=list(same.values))
            return f"repeats trial {same.number}'s configuration: not trained again"
        if busy is not None and repeats < 10 * self.n_trials:
            # two slots must not train the same configuration at once (a small categorical space
            # makes that likely among random startup points): ask again
            trial.set_user_attr("duplicate_of", busy.number)
            self.study.tell(trial, state=TrialState.FAIL)
            return f"trial {busy.number} is training the same configuration now; asking again"
        return None


def not_run(study, trial, why: str) -> None:
    """Tell ``trial`` (asked, never started) FAIL as not run, and put its configuration back into the queue."""
    from optuna.trial import TrialState

    params = dict(trial.params)
    trial.set_user_attr(ATTR_SURPLUS, True)
    trial.set_user_attr(ATTR_FAIL_REASON, f"not run: {why}")
    study.tell(trial, state=TrialState.FAIL)
    if params:
        study.enqueue_trial(params)
    log.info("Trial %d not run (%s); its configuration goes back into the queue", trial.number, why)
