"""Warm trial workers: one long-lived ``python -m sweeper.worker`` process per slot.

A fresh trial pays for starting Python, importing torch/transformers/peft,
reading and tokenizing the data and loading the base model before it trains a
step; on small and medium trials that is most of the trial. A warm worker
imports the libraries once and keeps what trials share (:mod:`ftrun.worker_cache`:
tokenized datasets, the tokenizer, the base weights in host memory), so a trial
pays only for its own model instance, adapter, optimizer and training.

Each trial still gets a fresh model instance (a copy of the kept weights),
fresh seeding (``ftrun.train.run`` seeds), its own MLflow run, its own log
file (the worker's stdout and stderr are pointed at ``trial.log`` for the
trial), its own environment (the Optuna and MLflow variables a fresh trial
process would get) and a reset of accelerate's process-wide state and of the
peak-memory counters. A trial that kills its worker (segfault, OOM kill,
``os._exit``) fails with that reason, and the slot starts a new worker for its
next trial. A worker is replaced after ``worker_max_trials`` trials or when its
resident memory passes ``worker_max_rss_mb``.

The protocol is one JSON line per message: requests on the worker's stdin,
replies on a pipe whose descriptor is the worker's first argument (so nothing
a trial prints can be mistaken for a reply).

This module's parent side (:class:`Worker`, :class:`WarmTrial`) imports neither
torch nor ftrun's training code; :func:`main` is the worker process.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from sweeper.trial_env import compose_trial, trial_process

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging format


# ---------------------------------------------------------------------------
# the sweeper's side


class Worker:
    """A warm worker process pinned to one slot."""

    def __init__(self, slot, log_path: Path, env: Optional[Dict[str, str]] = None):
        from sweeper.slots import popen

        self.slot = slot
        self.trials = 0
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)
        self.reply_file = os.fdopen(read_fd, "rb", buffering=0)
        self._buf = b""
        cmd = [sys.executable, "-m", "sweeper.worker", str(write_fd)]
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self.proc = popen(cmd, slot, dict(env or {}), log_path, stdin=subprocess.PIPE, pass_fds=(write_fd,))
        os.close(write_fd)
        self.started = time.time()
        log.info("Warm worker %d started for slot %d", self.proc.pid, slot.index)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, request: Dict[str, Any]) -> None:
        self.trials += 1
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def reply(self) -> Optional[Dict[str, Any]]:
        """The next reply if one has arrived (a trial's end), else None; never blocks."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.reply_file], [], [], 0)
            if not ready:
                return None
            chunk = self.reply_file.read(65536)
            if not chunk:  # the worker is gone
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        message = json.loads(line)
        return self.reply() if message.get("ready") else message

    def rss_mb(self) -> float:
        try:
            import psutil

            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except Exception:
            return 0.0

    def close(self, grace_s: float = 30.0) -> None:
        """Let the worker exit after its current trial (end of input), or stop it."""
        from sweeper.slots import stop

        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                stop(self.proc)
        self.reply_file.close()


class WarmTrial:
    """A trial running in a warm worker, with the face of a trial process (``poll``, ``wait``,
    ``pid``, ``returncode``) so the sweep loop treats both alike."""

    def __init__(self, worker: Worker, request: Dict[str, Any]):
        self.worker = worker
        self.pid = worker.pid
        self.returncode: Optional[int] = None
        self.info: Dict[str, Any] = {}
        self.worker_died = False
        worker.submit(request)

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        message = self.worker.reply()
        if message is not None:
            self.info = message
            self.returncode = int(message.get("rc", 1))
        elif not self.worker.alive():
            message = self.worker.reply()  # a reply written just before it exited
            if message is not None:
                self.info = message
                self.returncode = int(message.get("rc", 1))
            else:
                self.worker_died = True
                self.returncode = self.worker.proc.returncode
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired("warm trial", timeout)
            select.select([self.worker.reply_file], [], [], 0.5)
        return self.returncode


# ---------------------------------------------------------------------------
# the worker process


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    reply = os.fdopen(int(argv[0]), "w", buffering=1)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
    import faulthandler

    faulthandler.enable()  # a segfault leaves its traceback in the trial's log
    from ftrun.signals import stop_on_signals

    stop_on_signals()  # a trial stopped by the sweeper ends its MLflow run KILLED, as `python -m ftrun` does
    started = time.perf_counter()
    from ftrun import worker_cache

    prepare_process()
    worker_cache.enable()
    log.info("Worker %d ready in %.1f s", os.getpid(), time.perf_counter() - started)
    reply.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    requests = Requests(sys.stdin.fileno())
    while True:
        request = requests.next()
        if request is None:
            return 0
        if "pack" in request or "join" in request:  # hydra.sweeper.pack: several trials at once, a reply as each
            # ends (sweeper.pack); trials sent to join a pack that ended meanwhile start a pack of their own, the
            # first one's, which the others join (each checked against it)
            from sweeper.pack_process import run_pack

            if "join" in request:
                first, *others = request["join"]
                request = {"pack": [first]}
                if others:
                    requests.queue.insert(0, {"join": others})
            run_pack(request, lambda message: reply.write(json.dumps(message) + "\n"), joins=requests.joins)
        else:
            rc, info = run_trial(request)
            reply.write(json.dumps({"rc": rc, **info}) + "\n")
        _release_memory()  # after the reply: the sweeper need not wait for it


class Requests:
    """The sweeper's messages on the worker's stdin, one JSON object a line: :meth:`next` waits for one; a pack in
    training takes the trials sent to join it (:meth:`joins`) between steps without waiting; other messages wait
    their turn."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""
        self.queue: List[Dict[str, Any]] = []
        self.eof = False

    def next(self) -> Optional[Dict[str, Any]]:
        """The next message, waiting for it; None at the end of input (the sweeper closed it)."""
        while not self.queue and not self.eof:
            self._read(None)
        return self.queue.pop(0) if self.queue else None

    def joins(self) -> List[Dict[str, Any]]:
        """The members of every join message arrived so far (``{"join": [member, ...]}``); never waits."""
        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._read(0)
        members = [m for message in self.queue if "join" in message for m in message["join"]]
        self.queue = [message for message in self.queue if "join" not in message]
        return members

    def _read(self, timeout: Optional[float]) -> None:
        if not select.select([self.fd], [], [], timeout)[0]:
            return
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        self.queue.extend(json.loads(line) for line in lines if line.strip())


def prepare_process() -> None:
    """Once, before the first trial: import what every trial imports, then freeze it for the garbage collector.
    What the imports made lives as long as the worker; out of the collector's sight, a full collection (the
    Trainer's ``free_memory`` at every train, :func:`_release_memory` after every trial) no longer walks it:
    ~0.3 s of a 2 s tiny trial (bench/packed_trials.py). The collector is paused while they import
    (:mod:`ftrun.collector`). First the optional libraries no trial of the sweep needs are hidden
    (``FTRUN_UNUSED_LIBRARIES``, which the sweeper sets: :func:`sweeper.worker_pool.worker_env`)."""
    from ftrun import collector
    from ftrun.unused_libraries import hide, named

    hide(named() or [])
    collector.pause()
    _import_libraries()
    collector.resume()


def _import_libraries() -> None:
    """What every trial imports, once."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import peft  # noqa: F401
    import datasets  # noqa: F401
    import matplotlib.pyplot  # noqa: F401  (the loss plot)
    import mlflow  # noqa: F401

    import ftrun.data  # noqa: F401
    import ftrun.model  # noqa: F401
    import ftrun.tracking  # noqa: F401
    import ftrun.train  # noqa: F401


def run_trial(request: Dict[str, Any]):
    """Compose the trial's config from its overrides and run it, as ``python -m ftrun`` would.

    Returns (exit status, info), the status from the map ``python -m ftrun`` uses
    (:mod:`ftrun.exit_status`): 0 done, 2 a configuration error (its message logged), 3 a
    diverged run, 1 any other exception (its traceback in the log).
    """
    from ftrun.exit_status import EXIT_OK, exit_status

    started = time.perf_counter()
    info: Dict[str, Any] = {}
    with trial_process(request["log"], request.get("env", {})):
        try:
            cfg, run_dir, overrides = compose_trial(request["args"])
            info["compose_s"] = time.perf_counter() - started
            from ftrun.unused_libraries import check_trial

            check_trial(cfg)
            from ftrun.train import run

            run(cfg, run_dir, overrides=overrides)
            rc = EXIT_OK
        except KeyboardInterrupt as e:  # ftrun.signals.Stopped: the sweeper stops this trial (and the worker)
            from ftrun.tracking import end_interrupted_run

            end_interrupted_run(f"stopped by {e}")
            raise
        except BaseException as e:  # noqa: BLE001 - the worker outlives the trial
            rc = exit_status(e)
        finally:
            info["worker_s"] = time.perf_counter() - started
        logging.getLogger(__name__).info("Trial finished in the worker after %.2f s", info["worker_s"])
    return rc, info


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
