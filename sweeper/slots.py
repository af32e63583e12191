"""Trial slots: which devices and CPU cores each concurrent trial gets, and how it is launched.

A slot is one place a trial can run. With GPUs, each slot owns ``gpus_per_trial``
devices (its ``CUDA_VISIBLE_DEVICES``); with ``gpus_per_trial > 1`` the trial is
launched with ``accelerate launch --multi_gpu --num_processes g`` (or torchrun)
so it trains with DDP on all of them. Every slot also gets its share of the CPU
cores (affinity and ``OMP_NUM_THREADS``), so two CPU trials do not fight over
the same cores. On a machine without GPUs ``gpus_per_trial > 1`` still starts
that many processes, on CPU with gloo: that is how the multi-process path is
tested without a GPU.

Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class Slot:
    index: int
    gpus: List[str] = field(default_factory=list)
    """Device ids for CUDA_VISIBLE_DEVICES (empty: CPU)."""
    cores: List[int] = field(default_factory=list)
    """CPU cores the trial's processes are pinned to."""
    processes: int = 1
    """Processes per trial (DDP ranks)."""

    def env(self) -> Dict[str, str]:
        threads = str(max(1, len(self.cores) // max(1, self.processes)))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # an empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU slot must not grab one
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env

    def describe(self) -> str:
        dev = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        return f"slot {self.index}: {dev}, cores {_ranges(self.cores)}, {self.processes} process(es)"


def visible_gpus() -> List[str]:
    """GPU ids this process may use, without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def make_slots(n_jobs: int, gpus_per_trial: Optional[int] = None, devices: Optional[Sequence] = None,
               cores: Optional[Sequence[int]] = None) -> List[Slot]:
    """Split devices and cores into ``n_jobs`` slots (fewer when the devices run out)."""
    if n_jobs < 1:
        raise ValueError(f"hydra.sweeper.n_jobs={n_jobs}: must be >= 1")
    gpus = [str(d) for d in devices] if devices is not None else visible_gpus()
    if gpus_per_trial is None:
        gpus_per_trial = 1 if gpus else 0
    if gpus_per_trial < 0:
        raise ValueError(f"hydra.sweeper.gpus_per_trial={gpus_per_trial}: must be >= 0")
    cores = sorted(cores if cores is not None else _available_cores())
    if gpus_per_trial > 0 and gpus:
        fit = len(gpus) // gpus_per_trial
        if fit == 0:
            raise ValueError(f"hydra.sweeper.gpus_per_trial={gpus_per_trial}: only {len(gpus)} device(s) "
                             f"({','.join(gpus)}) are available")
        if n_jobs > fit:
            log.warning("hydra.sweeper.n_jobs=%d: %d device(s) / %d per trial give %d slot(s); using %d",
                        n_jobs, len(gpus), gpus_per_trial, fit, fit)
            n_jobs = fit
        device_sets = [gpus[i * gpus_per_trial:(i + 1) * gpus_per_trial] for i in range(n_jobs)]
    else:
        device_sets = [[] for _ in range(n_jobs)]
    processes = max(1, gpus_per_trial)
    per = max(1, len(cores) // n_jobs)
    slots = []
    for i in range(n_jobs):
        mine = cores[i * per:(i + 1) * per] if len(cores) >= n_jobs else [cores[i % len(cores)]]
        slots.append(Slot(index=i, gpus=device_sets[i], cores=list(mine), processes=processes))
    return slots


def trial_command(command: Sequence[str], overrides: Sequence[str], processes: int = 1,
                  launcher: str = "accelerate", has_gpus: bool = True) -> List[str]:
    """``python -m ftrun <overrides>``, or the same under accelerate/torchrun for several processes.

    ``command`` is the single-process entry point (``[python, -m, ftrun]`` or a script).
    """
    command = list(command)
    if processes <= 1:
        return command + list(overrides)
    python, entry = command[0], command[1:]
    port = str(free_port())
    if launcher == "accelerate":
        # --multi_gpu: on a machine without GPUs accelerate then starts the ranks on CPU with
        # gloo; `--cpu --num_processes 2` would silently start only one
        head = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", port]
    elif launcher == "torchrun":
        head = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", port]
    else:
        raise ValueError(f"hydra.sweeper.launcher={launcher}: choose accelerate or torchrun")
    return head + entry + list(overrides)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def popen(cmd: List[str], slot: Slot, env: Dict[str, str], log_path, cwd=None, stdin=None,
          pass_fds=()) -> subprocess.Popen:
    """Start a trial (or a warm worker) in its own process group, pinned to the slot's cores,
    dying with the sweeper."""
    full_env = {**os.environ, **slot.env(), **env}
    cores = set(slot.cores)

    def prepare():  # runs in the child between fork and exec
        if cores and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, cores)
            except OSError:
                pass
        _die_with_parent()

    out = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, env=full_env, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True, preexec_fn=prepare, pass_fds=tuple(pass_fds))
    finally:
        out.close()


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the trial's process group, then SIGKILL what is left after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the sweeper dies (even by SIGKILL), so no trial is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _available_cores() -> List[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _ranges(cores: Sequence[int]) -> str:
    if not cores:
        return "-"
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
