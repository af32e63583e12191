"""Packed trials in a sweep (``hydra.sweeper.pack=K``, issue 23): up to K compatible LoRA trials trained at once by
one slot's warm worker, over one copy of the base (:func:`ftrun.packed.train.train_packed`).

The sweeper asks the study for up to K trials for a free slot, composes each trial's config and keeps those
:func:`ftrun.packed.compatible` with the first (the rest wait for the next free slot, and the log says why:
:func:`pack_reason`). It sends the worker ONE message with every member's arguments, environment and log; the
worker answers once per member as that member leaves the pack (finished, pruned or diverged), so the sweeper
records each trial when it ends. Each member is its own Optuna trial (its pruner decides for it alone,
:func:`sweeper.trial.pruning_callback` with the member's own variables) and its own MLflow child run
(:mod:`ftrun.packed.tracking`). The pack's output goes to the first member's ``trial.log``; the others' logs say
where it is. A worker that dies fails every member still in the pack, as it fails a trial alone.

When a member leaves and the study wants more trials, the sweeper gathers compatible ones the same way (compatible
with the members still training, up to K in all) and sends them to the worker (:meth:`Pack.join`), which adds each
before its next step (:func:`ftrun.packed.train.train_packed`'s ``admit``): a pack stays full while the sweep has
trials for it, instead of running on with the members left until the last one ends.

A member's trial-seconds are the pack's wall time while it was in it, each second split among the members in the
pack then (its ``packed_with`` attribute lists the trials it started with): the device was shared, and a budget
counts it once.

The parent side (:class:`Pack`, :class:`PackMember`) imports neither torch nor ftrun's training code;
:func:`sweeper.pack_process.run_pack` runs in the worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from sweeper.worker import WarmTrial

log = logging.getLogger("ftrun.sweeper")


AUTO_MAX = 8  # pack=auto: at most this many trials in a pack (bench/packed_trials.py measures K up to 8)


def pack_size(conf: Dict[str, Any]) -> int:
    """The most trials a pack may hold: ``hydra.sweeper.pack``, or :data:`AUTO_MAX` for ``auto`` (then the slot's
    memory decides, :func:`sweeper.slot_memory.pack_too_big`)."""
    return AUTO_MAX if conf.get("pack") == "auto" else int(conf.get("pack") or 1)


def pack_reason(conf: Dict[str, Any], warm: bool) -> Optional[str]:
    """Why this sweep's trials cannot be packed at all (None: they can, K > 1)."""
    if pack_size(conf) <= 1:
        return "hydra.sweeper.pack=1"
    if not warm:
        return "packed trials need warm workers (hydra.sweeper.workers=warm, one process per trial, no command)"
    if conf.get("rung_branch"):
        return ("hydra.sweeper.rung_branch trains a decay branch per trial, which a pack cannot do yet (sweep=auto "
                "sets it: add hydra.sweeper.rung_branch=null hydra.sweeper.pruner=none to pack)")
    return None


# ---------------------------------------------------------------------------
# the sweeper's side


def gather(waiting: List[Any], next_trial: Callable[[], Any], trial_args: Callable[..., List[str]], k: int,
           composed: Dict[int, Any], too_big: Optional[Callable[[List[Any]], Optional[str]]] = None,
           present: Sequence[int] = ()):
    """Up to ``k`` trials that can train in one pack: ``([(picked, args)], left)``.

    ``waiting``: trials asked before that could not join a pack (tried first, in order); ``next_trial()``: a new
    trial as ``(trial, params, extra, trial_dir)`` or None; ``trial_args(*picked)``: its command-line arguments,
    composed here as the worker will (:func:`sweeper.trial_env.compose_trial`, kept in ``composed`` by trial number)
    to check :func:`ftrun.packed.compatible`. A first trial that cannot be packed at all comes back alone; trials
    that cannot join the others are ``left`` to wait for the next free slot (at most ``k`` wait). ``too_big(cfgs)``
    (``pack=auto``): why a pack of these composed configs would not fit the slot's memory; the trial that would
    not fit waits, and the pack is full. ``present``: the numbers of the trials training in the pack these join
    (then every trial must be compatible with them, and none comes back alone). The log says why.
    """
    members: List[Any] = []
    left: List[Any] = []
    candidates = iter(list(waiting))
    asks = 0
    while len(members) < k:
        picked = next(candidates, None)
        if picked is None:
            if len(left) >= k or asks > 2 * k:
                break
            asks += 1
            picked = next_trial()
            if picked is None:
                continue
        args = trial_args(*picked)
        cfgs = [composed[n] for n in present] + [composed[m[0].number] for m, _ in members]
        reason = _pack_reason(cfgs, picked[0].number, args, composed)
        full = None if reason or not cfgs or too_big is None else too_big([*cfgs, composed[picked[0].number]])
        if full:
            log.info("Trial %d waits for the next free slot: %s", picked[0].number, full)
            return members, [*left, picked, *candidates]
        if reason is None:
            members.append((picked, args))
        elif not cfgs:
            log.info("Trial %d runs unpacked: %s", picked[0].number, reason)
            return [(picked, args)], [*left, *candidates]
        else:
            first = present[0] if present else members[0][0][0].number
            log.info("Trial %d cannot join the pack of trial %d: %s; it waits for the next free slot",
                     picked[0].number, first, reason)
            left.append(picked)
    return members, [*left, *candidates]


def _pack_reason(cfgs: List[Any], number: int, args: List[str], composed: Dict[int, Any]) -> Optional[str]:
    """Why trial ``number`` cannot train in a pack with ``cfgs`` (None: it can)."""
    from ftrun.config import ConfigError
    from ftrun.packed import compatible
    from sweeper.trial_env import compose_trial

    try:
        if number not in composed:
            composed[number] = compose_trial(args)[0]
    except (ConfigError, ValueError) as e:  # the trial itself fails with this message, alone
        composed[number] = None
        return f"its config does not compose ({e})"
    if composed[number] is None:
        return "its config does not compose"
    return compatible([*cfgs, composed[number]])


class Pack:
    """Trials sent to one warm worker as one pack; its replies, kept by trial number; each member's trial-seconds."""

    def __init__(self, worker, members: List[Dict[str, Any]]):
        self.worker = worker
        self.replies: Dict[int, Dict[str, Any]] = {}
        self.numbers = [int(m["number"]) for m in members]  # every member it has had
        self.open = set(self.numbers)  # members not yet recorded by the sweeper
        self.charged: Dict[int, float] = {n: 0.0 for n in self.numbers}
        self.since = time.time()
        worker.submit({"pack": members})
        worker.trials += len(members) - 1  # (worker_max_trials counts trials)

    def join(self, members: List[Dict[str, Any]]) -> None:
        """Send trials to join the pack while it trains (a member left): the worker adds them before its next
        step (or trains them as a pack of their own if the pack ended meanwhile)."""
        self._settle()
        numbers = [int(m["number"]) for m in members]
        self.numbers += numbers
        self.open.update(numbers)
        self.charged.update({n: 0.0 for n in numbers})
        self.worker.submit({"join": members})
        self.worker.trials += len(members) - 1

    def seconds(self, number: int) -> float:
        """Member ``number``'s trial-seconds so far: the pack's wall time while it was in it, each second split
        among the members then in the pack."""
        now = time.time()
        share = (now - self.since) / len(self.open) if number in self.open else 0.0
        return self.charged[number] + share

    def leave(self, number: int) -> None:
        self._settle()
        self.open.discard(number)

    def _settle(self) -> None:
        now = time.time()
        for n in self.open:
            self.charged[n] += (now - self.since) / len(self.open)
        self.since = now

    def drain(self) -> None:
        while not self.worker.reply_file.closed:  # (closed: the pool dropped the dead worker at another member's end)
            message = self.worker.reply()
            if message is None:
                return
            self.replies[int(message.get("number", -1))] = message


class PackMember(WarmTrial):
    """One trial of a :class:`Pack`, with a warm trial's face (``poll``, ``wait``, ``returncode``, ``info``)."""

    def __init__(self, pack: Pack, number: int):  # noqa: D107 - no request of its own: the pack sent it
        self.worker = pack.worker
        self.pack = pack
        self.number = number
        self.pid = pack.worker.pid
        self.returncode: Optional[int] = None
        self.info: Dict[str, Any] = {}
        self.worker_died = False

    def others_running(self) -> bool:
        """Whether other members of its pack are still training (the worker must not be retired yet)."""
        return bool(self.pack.open - {self.number})

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        self.pack.drain()
        message = self.pack.replies.get(self.number)
        if message is None and not self.worker.alive():
            self.pack.drain()  # a reply written just before it exited
            message = self.pack.replies.get(self.number)
            if message is None:
                self.worker_died = True
                self.returncode = self.worker.proc.poll()
        if message is not None:
            self.info = message
            self.returncode = int(message.get("rc", 1))
        if self.returncode is not None:
            self.pack.leave(self.number)
        return self.returncode

    def seconds(self) -> float:
        """Its trial-seconds so far (:meth:`Pack.seconds`)."""
        return self.pack.seconds(self.number)
