"""Heartbeats and stale-trial recovery, and every use of Optuna's private API in ftrun.

A RUNNING trial whose sweeper is gone is found here and recorded: with its result when the trial
had finished (read through :func:`sweeper.outcome.classify`, as a trial that ends under its
sweeper), else failed with the reason and queued again (from its last checkpoint when it has one).
A sweeper of this host that is gone (its pid) is known at once; another host's by Optuna's
heartbeat (RDB storages): a trial whose sweeper has not recorded its heartbeat for
``stale_after_s`` seconds is stale. A journal file has no heartbeat table: there the sweeper's own
heartbeat, kept in the trial's user attributes, stands in.

Ask-and-tell exposes neither a trial's storage id nor the study's storage, and Optuna's
``fail_stale_trials`` fails trials before their reason can be written, so this module reaches
into Optuna's private API (``_storage``, ``_trial_id``, ``_study_id``, ``optuna.storages._heartbeat``,
``_get_stale_trial_ids``). It is written for Optuna :data:`OPTUNA_WRITTEN_FOR`; a test fails when
the installed Optuna differs, so that these uses are checked again before the pin moves.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ftrun.contract import ATTR_FAIL_REASON, ATTR_PAUSED_AT, ATTR_PAUSED_AT_STEP, ATTR_TRIAL_DIR, TAG_RETRY_OF
from sweeper.outcome import classify, has_checkpoint, read_result

log = logging.getLogger("ftrun.sweeper")

OPTUNA_WRITTEN_FOR = "5.1"
"""The Optuna major.minor whose private API this module was written against."""


def optuna_version_mismatch() -> Optional[str]:
    """A message when the installed Optuna is not :data:`OPTUNA_WRITTEN_FOR`, else None."""
    import optuna

    have = ".".join(optuna.__version__.split(".")[:2])
    if have == OPTUNA_WRITTEN_FOR:
        return None
    return (f"sweeper/stale_trials.py uses Optuna's private API as of Optuna {OPTUNA_WRITTEN_FOR}, but Optuna "
            f"{optuna.__version__} is installed: check _storage, _trial_id, _study_id, "
            "optuna.storages._heartbeat and _get_stale_trial_ids against it, then move OPTUNA_WRITTEN_FOR")


# ---------------------------------------------------------------------------
# the private API, each use once


def trial_id(trial) -> int:
    """The storage's id of a trial (live or frozen)."""
    return trial._trial_id


def stored_trial(study, trial):
    """The trial ``trial`` (or storage id) as the storage has it now, system attributes included."""
    return study._storage.get_trial(trial if isinstance(trial, int) else trial._trial_id)


def set_trial_attr(study, trial, key: str, value: Any) -> None:
    """A user attribute on a trial known only frozen (as ``study.get_trials`` returns it)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def _heartbeats(study) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


def beat(study, trial, now: Optional[float] = None) -> None:
    """Record that a trial of this sweeper is alive: Optuna's heartbeat where the storage has one,
    else (journal file) a user attribute."""
    try:
        if _heartbeats(study):
            study._storage.record_heartbeat(trial._trial_id)
        else:
            study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", now or time.time())
    except Exception as e:  # a storage hiccup must not kill the sweep
        log.debug("heartbeat of trial %d: %s", trial.number, e)


def _stale_ids(study) -> set:
    # Optuna's own query of its heartbeat table, timed by the database server's clock (a private
    # method: optuna.storages.fail_stale_trials would fail the trials first, and a finished trial's
    # attributes can no longer be written, so the reason why would be lost)
    return set(study._storage._get_stale_trial_ids(study._study_id)) if _heartbeats(study) else set()


# ---------------------------------------------------------------------------
# finding and recording trials left behind


def left_behind(study, host: str, stale_after_s: float) -> List[Tuple[Any, str]]:
    """RUNNING trials whose sweeper is gone, each with why it is thought gone."""
    from optuna.trial import TrialState

    heartbeats = _heartbeats(study)
    stale_ids = _stale_ids(study)
    now = time.time()
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get(ATTR_PAUSED_AT) is not None:  # paused at a rung: no process to lose; any sweeper may promote it
            continue
        t_host, pid, heartbeat = a.get("sweeper_host"), a.get("sweeper_pid"), a.get("heartbeat")
        start = t.datetime_start.timestamp() if t.datetime_start else now
        why = f"no heartbeat for more than {stale_after_s:.0f} s (stale_after_s): its host or sweeper died"
        if t_host == host and pid is not None:
            stale = not alive(int(pid))
            why = "its sweeper's process is gone"
        elif heartbeats:  # (pid None: its sweeper died between asking for it and recording anything)
            stale = t._trial_id in stale_ids or (pid is None and now - start > stale_after_s)
        else:
            stale = now - float(heartbeat if heartbeat is not None else start) > stale_after_s
        if stale:
            found.append((t, why))
        else:
            log.debug("Trial %d is running under sweeper %s:%s; leaving it", t.number, t_host, pid)
    return found


def recover(study, t, why: str, s, parent=None) -> None:
    """Record trial ``t``, left RUNNING by a sweeper that is gone (``s``: :class:`sweeper.settings.Settings`)."""
    import optuna

    trial_dir = Path(t.user_attrs.get(ATTR_TRIAL_DIR, s.sweep_dir / f"trial_{t.number:04d}"))
    started = t.datetime_start.timestamp() if t.datetime_start else 0.0
    result = read_result(trial_dir, since=started)
    retry = bool(s.conf.get("retry_interrupted", True))
    try:
        if result is not None and result.get("status") == "paused":  # it paused before its sweeper recorded it
            for key in (ATTR_PAUSED_AT, ATTR_PAUSED_AT_STEP):
                set_trial_attr(study, t, key, int(result.get(key) or 0))
            log.info("Trial %d, left RUNNING, had paused at %s examples; it waits to be promoted", t.number,
                     result.get(ATTR_PAUSED_AT))
            return
        if result is not None:  # it had finished: the same rule as a trial that ends under its sweeper
            out = classify(result, s.objectives, s.multi)
            for key, value in out.attrs().items():
                set_trial_attr(study, t, key, value)
            study.tell(t.number, values=out.values, state=getattr(optuna.trial.TrialState, out.state))
            log.info("Trial %d, left RUNNING, had finished; recorded %s%s", t.number, out.state,
                     f" ({out.reason})" if out.reason else f" {out.values}" if out.values else "")
            return
        checkpoint = has_checkpoint(trial_dir)
        reason = (f"left RUNNING by a sweep that stopped (pid {t.user_attrs.get('sweeper_pid')} on "
                  f"{t.user_attrs.get('sweeper_host')}): {why}")
        if retry:
            reason += "; retried" + (" from its last checkpoint" if checkpoint else " from the start")
        set_trial_attr(study, t, ATTR_FAIL_REASON, reason)
        # the state change is the lock: of several sweepers that found the trial stale, only the one
        # whose tell succeeds retries it
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as e:
        log.info("Trial %d was recorded by another sweeper meanwhile (%s)", t.number, e)
        return
    log.warning("Trial %d %s", t.number, reason)
    if parent:
        parent.tag_child(trial_dir, t, "FAIL", reason, end_run=not (retry and checkpoint))
    if retry:
        _retry(study, t, trial_dir)


def _retry(study, t, trial_dir: Path) -> None:
    """Queue a copy of the failed trial ``t`` (Optuna's RetryHeartbeatStaleTrialCallback: same
    parameters, ``retry_history`` in its system attributes), to resume from ``trial_dir``."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    again = copy.deepcopy(t)
    keep = {k: v for k, v in t.user_attrs.items()
            if k not in (ATTR_FAIL_REASON, "duration_s", "heartbeat", "worker_pid", "worker_trial")}
    again.user_attrs = {**keep, TAG_RETRY_OF: t.number, "resume_dir": str(trial_dir),
                        "extra": [e for e in t.user_attrs.get("extra", []) if not e.startswith("resume=")]}
    with warnings.catch_warnings():  # "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback()(study, again)


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
