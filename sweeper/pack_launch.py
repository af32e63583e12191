"""The sweep's side of packed trials (``hydra.sweeper.pack``, :mod:`sweeper.pack`): starting a pack in a free slot,
and sending new trials to join a pack a member left. A mixin of :class:`sweeper.sweep.Sweep`, as
:class:`sweeper.pausing.PauseAndPromote` is."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

from ftrun.contract import ATTR_PACKED_WITH, TRIAL_LOG
from sweeper.pack import Pack, PackMember, gather, pack_size
from sweeper.slot_memory import pack_too_big
from sweeper.slots import Slot
from sweeper.worker import WarmTrial

log = logging.getLogger("ftrun.sweeper")


class PackLaunching:
    """Start packs and fill them as members leave."""

    def _launch_pack(self, slot: Slot, k: int, want: int) -> int:
        """Start up to ``k`` trials that can train in one pack in ``slot`` (:mod:`sweeper.pack`): waiting ones first,
        then up to ``want`` new ones from the study."""
        specs = self._gather_pack(slot, k, want)
        worker = self.pool.get(slot)
        pack = Pack(worker, [self._member(s) for s in specs]) if len(specs) > 1 else None
        if pack is not None:
            log.info("Trials %s train in one pack (%s, warm worker %d)", ", ".join(str(t.number) for t, *_ in specs),
                     slot.describe(), worker.pid)
        for trial, trial_dir, args, extra, (overrides, env, cmd) in specs:
            if pack is None:
                proc = WarmTrial(worker, {"args": args, "env": env, "log": str(trial_dir / TRIAL_LOG)})
            else:
                trial.set_user_attr(ATTR_PACKED_WITH, pack.numbers)
                proc = PackMember(pack, trial.number)
            self._start(slot, trial, trial_dir, overrides, extra, args, env, cmd, True, proc=proc,
                        share=1.0 / len(specs))
        return len(specs)

    def _join(self, slot: Slot, pack, want: int) -> int:
        """A member left ``pack`` in ``slot`` and it still trains: send it up to ``want`` new trials (waiting ones
        first) compatible with the members still in it, up to the pack's size; how many joined."""
        room = pack_size(self.s.conf) - len(pack.open)
        worker = self.pool.workers.get(slot.index)
        if room <= 0 or worker is not pack.worker or not worker.alive() or any(
                self._composed.get(n) is None for n in pack.open):
            return 0
        if self.pool.max_trials and worker.trials >= self.pool.max_trials:  # it retires when the pack ends
            return 0
        if self._promotable():  # a paused trial the rule promotes goes first; it resumes alone, in a free slot
            return 0
        present = sorted(pack.open)
        specs = self._gather_pack(slot, room, want, present)
        if not specs:
            return 0
        pack.join([self._member(s) for s in specs])
        log.info("Trials %s join the pack of trials %s (%s, warm worker %d)",
                 ", ".join(str(t.number) for t, *_ in specs), ", ".join(map(str, present)), slot.describe(), worker.pid)
        for trial, trial_dir, args, extra, (overrides, env, cmd) in specs:
            trial.set_user_attr(ATTR_PACKED_WITH, [*present, *(t.number for t, *_ in specs)])
            self._start(slot, trial, trial_dir, overrides, extra, args, env, cmd, True, proc=PackMember(
                pack, trial.number), share=1.0 / len(pack.open))
        return len(specs)

    def _gather_pack(self, slot: Slot, k: int, want: int, present: Sequence[int] = ()) -> List[tuple]:
        """Up to ``k`` trials for a pack in ``slot`` (joining ``present``: trial numbers training in it), waiting
        ones first, then up to ``want`` new ones (:func:`sweeper.pack.gather`); each prepared to start."""
        asked = [0]

        def ask():
            if asked[0] >= want:
                return None
            asked[0] += 1
            return self._next_trial()

        def memory(cfgs):  # pack=auto: as many as the slot's memory holds
            return pack_too_big(cfgs, slot, self.s.conf.get("memory_limit_gb"), int(self.s.conf.get("n_jobs", 1)))

        members, self.pending = gather(self.pending, ask, self._trial_args, k, self._composed,
                                       memory if self.s.conf.get("pack") == "auto" else None, present=present)
        specs = []
        for picked, args in members:
            trial, params, extra, trial_dir = picked
            if self._too_big(trial, slot, args):
                continue
            specs.append((trial, trial_dir, args, extra, self._prepare(slot, trial, params, extra, trial_dir, args)))
        return specs

    @staticmethod
    def _member(spec: tuple) -> Dict[str, Any]:
        """A pack member's message to the worker: its number, arguments, environment and log."""
        trial, trial_dir, args, _, (_, env, _) = spec
        return {"number": trial.number, "args": args, "env": env, "log": str(trial_dir / TRIAL_LOG)}

