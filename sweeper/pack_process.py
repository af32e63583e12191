"""The worker's side of a pack (``hydra.sweeper.pack=K``, :mod:`sweeper.pack` is the sweeper's): :func:`run_pack`
trains the members of one request together (:func:`ftrun.packed.train.train_packed`) and answers for each member as
it leaves the pack, each with its own pruner and MLflow run."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

from ftrun.config import ConfigError
from sweeper.trial_env import compose_trial, trial_process

log = logging.getLogger("ftrun.sweeper")


def run_pack(request: Dict[str, Any], reply: Callable[[Dict[str, Any]], None],
             joins: Optional[Callable[[], List[Dict[str, Any]]]] = None) -> None:
    """Train the request's members as one pack; ``reply`` gets one message per member, as it leaves. ``joins()``:
    members the sweeper sent since (``{"join": [...]}``, when a member left and the study wants more trials); each
    joins the pack before its next step, or, when it cannot (its config does not compose or differs from the
    pack's), is answered at once with the exit status an alone trial would get."""
    from ftrun.exit_status import EXIT_DIVERGED, exit_status

    members = list(request["pack"])
    started = time.perf_counter()
    first_log = members[0]["log"]
    for m in members[1:]:
        _point_to_pack_log(m, members, first_log)
    # the MLflow store and parent run are the same for every member; each one's Optuna variables go to its pruner
    from ftrun.contract import MLFLOW_PARENT_RUN_ENV, MLFLOW_URI_ENV

    shared_env = {k: v for k, v in members[0].get("env", {}).items() if k in (MLFLOW_URI_ENV, MLFLOW_PARENT_RUN_ENV)}
    pack = _PackTrials(members, reply, started)
    with trial_process(first_log, shared_env):
        try:
            composed = [compose_trial(m["args"]) for m in members]
            from ftrun.packed import compatible
            from ftrun.packed.train import train_packed

            runs = list(range(len(members)))  # train_packed's run index -> the member's index

            def admit():
                joining = []
                for m in joins() if joins is not None else []:
                    members.append(m)
                    try:
                        c = compose_trial(m["args"])
                        reason = compatible([composed[0][0], c[0]])
                        if reason is not None:
                            raise ConfigError(f"trial {m['number']} cannot join this pack: {reason}")
                    except Exception as e:  # noqa: BLE001 - it fails alone, as it would unpacked
                        log.error("%s", e)
                        composed.append(None)
                        pack.refuse(len(members) - 1, exit_status(e), str(e))
                        continue
                    composed.append(c)
                    runs.append(len(members) - 1)
                    joining.append((c[0], c[1]))
                training = [i for i in runs if i not in pack.done]  # the pack as the joiners start
                for i in training[len(training) - len(joining):]:
                    pack.companions[i] = [members[j]["number"] for j in training]
                    _point_to_pack_log(members[i], [members[j] for j in training], first_log)
                return joining

            log.info("Training %d trials in one pack: %s", len(members), ", ".join(str(m["number"]) for m in members))
            train_packed([c for c, _, _ in composed], [d for _, d, _ in composed],
                         on_evaluate=lambda i, run, metrics: pack.on_evaluate(runs[i], run, metrics),
                         on_end=lambda i, run: pack.on_end(runs[i], run, EXIT_DIVERGED if run.status == "diverged" else 0),
                         on_start=lambda i, run: pack.on_start(runs[i], run, composed[runs[i]][2]), admit=admit)
        except KeyboardInterrupt as e:  # ftrun.signals.Stopped: the sweeper stops the pack (and the worker)
            pack.end_all("KILLED", None, f"stopped by {e}")
            raise
        except BaseException as e:  # noqa: BLE001 - the worker outlives the pack
            pack.end_all("FAILED", exit_status(e), f"{type(e).__name__}: {e}")
        log.info("Pack finished in the worker after %.2f s", time.perf_counter() - started)


def _point_to_pack_log(member: Dict[str, Any], members: List[Dict[str, Any]], pack_log: str) -> None:
    with open(member["log"], "a") as f:
        f.write(f"Trained in one pack with trials {', '.join(str(x['number']) for x in members)}; "
                f"the pack's log is {pack_log}\n")


class _PackTrials:
    """The members' trackers and pruners, and their replies to the sweeper."""

    def __init__(self, members: List[Dict[str, Any]], reply: Callable[[Dict[str, Any]], None], started: float):
        self.members = members
        self.reply = reply
        self.started = started
        self.trackers: Dict[int, Any] = {}
        self.pruners: Dict[int, Any] = {}
        self.done: set = set()
        numbers = [m["number"] for m in members]
        self.companions: Dict[int, List[int]] = {i: numbers for i in range(len(members))}  # the pack as i started

    def on_start(self, i: int, run, overrides: List[str]) -> None:
        from ftrun.packed.tracking import make_packed_tracker
        from sweeper.trial import pruning_callback

        self.trackers[i] = make_packed_tracker(run.cfg, run.run_dir, overrides)
        self.pruners[i] = pruning_callback(run.cfg, env=self.members[i].get("env", {}))

    def on_evaluate(self, i: int, run, metrics: dict):
        """The member's pruner decides: False (go on), True (pruned) or "paused" (the promotion rule: it waits at
        this rung, its checkpoint written by the pack)."""
        from sweeper.trial import examples_seen

        cb = self.pruners.get(i)
        if cb is None:
            return False
        state = SimpleNamespace(global_step=run.global_step, max_steps=run.max_steps)
        if run.global_step >= run.max_steps:  # the last step's evaluation decides nothing (as on_train_end)
            return False
        seen = examples_seen(run.trainer.args, state, cb.every)
        if not cb.decide(metrics, state, seen):
            return False
        if cb.stopped(seen, run.global_step) == "paused":
            run.paused_at = seen
            return "paused"
        return True

    def on_end(self, i: int, run, rc: int) -> None:
        import json

        from ftrun.contract import MODEL_DIR, RESULT_FILE, TAG_FAIL_REASON, TAG_PAUSED_AT_STEP, TAG_PRUNED
        from ftrun.contract import TAG_PRUNED_AT_STEP
        from ftrun.fit import PAUSED_RUN_STATUS

        tracker = self.trackers.get(i)
        if tracker is not None:
            result = json.loads((run.run_dir / RESULT_FILE).read_text())
            tracker.log_history(run.history)
            numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            tracker.log_metrics({**numbers, "pruned": float(bool(result.get("pruned")))}, step=run.global_step)
            if result.get("pruned"):
                tracker.set_tags({TAG_PRUNED: "true", TAG_PRUNED_AT_STEP: str(run.global_step)})
            if run.status == "diverged":
                tracker.set_tags({"status": "diverged", TAG_FAIL_REASON: str(run.reason)})
                tracker.log_metrics({"diverged_at_step": run.diverged_at, "nonfinite_loss": 1.0}, step=run.diverged_at)
            if run.status == "paused":  # the promoted trial, resumed alone, reopens this run (its run_id file)
                tracker.set_tags({TAG_PAUSED_AT_STEP: str(run.global_step)})
                tracker.finish(PAUSED_RUN_STATUS)
            else:
                tracker.log_artifacts(run.run_dir, run.run_dir / MODEL_DIR)
                tracker.finish("FAILED" if run.status == "diverged" else "FINISHED")
        self._answer(i, rc)

    def end_all(self, status: str, rc: Optional[int], reason: str) -> None:
        """The pack stopped or failed: every member still in it ends so."""
        from ftrun.contract import TAG_FAIL_REASON

        for i in range(len(self.members)):
            if i in self.done:
                continue
            tracker = self.trackers.get(i)
            if tracker is not None:
                try:
                    tracker.set_tags({TAG_FAIL_REASON: reason[:5000]})
                    tracker.finish(status)
                except Exception as e:  # noqa: BLE001 - the store may be what failed
                    log.warning("MLflow: could not end trial %s's run (%s)", self.members[i]["number"], e)
            if rc is not None:
                self._answer(i, rc)

    def refuse(self, i: int, rc: int, reason: str) -> None:
        """A member that could not join the pack: answered at once, with no MLflow run opened; its log says why."""
        with open(self.members[i]["log"], "a") as f:
            f.write(f"ERROR: {reason}\n")
        self._answer(i, rc, reason)

    def _answer(self, i: int, rc: int, reason: Optional[str] = None) -> None:
        self.done.add(i)
        message = {"number": self.members[i]["number"], "rc": rc, "worker_s": time.perf_counter() - self.started,
                   "packed_with": self.companions.get(i, [self.members[i]["number"]])}
        self.reply({**message, "reason": reason} if reason else message)
