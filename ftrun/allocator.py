"""The C allocator a training process runs with: jemalloc where the machine has it.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's keeps the pages of freed
activations in its heap (its mmap threshold grows with every large free), so a CPU run's resident
memory climbs well above its live tensors: on the tiny model's packed alpaca job (bench/peer_llamafactory.py)
the training phase added 330 MB of RSS with glibc and 190 MB with jemalloc. PyTorch's CPU performance
guide recommends jemalloc or TCMalloc for training on CPU; ``torch.backends.xeon.run_cpu`` preloads them
the same way.

An allocator can only be chosen before the process starts, so ``ftrun`` (and ``python -m ftrun``)
starts itself again, once, with the library in ``LD_PRELOAD`` (:func:`reexec`): same PID, arguments,
descriptors and environment, before anything heavy is imported. Children (a sweep's warm workers,
the board's runs) inherit it. ``FTRUN_MALLOC`` picks ``jemalloc`` (default), ``tcmalloc`` or ``system``
(glibc, nothing preloaded); a machine without the library runs with glibc, as before
(``scripts/system_packages.sh`` installs ``libjemalloc2``).

jemalloc starts with ``MALLOC_CONF`` = :data:`JEMALLOC_CONF` unless the environment sets ``MALLOC_CONF`` itself
(an empty value gives jemalloc's defaults). jemalloc's default decay (``dirty_decay_ms`` 10 s) starts handing
freed pages back to the kernel the moment they are freed (here, of 200 MiB written and freed in 4 MiB blocks, 160
were gone at once), so every training step faulted much of its activations in again: on the packed alpaca job of
bench/peer_llamafactory.py a run took 255-275k minor page faults with it and 176-177k without it, and 2.03x
LLaMA-Factory's tokens/s against 1.87x (its ``jemalloc's default decay`` row), for a peak 4-5 MB higher (757-759 MB
against 752-754). :func:`release` hands the kept pages back at once (jemalloc's ``arena.<all>.purge``) when set-up
ends and when training ends: what follows training (saving, the loss plot, MLflow's upload) reuses few of
training's pages and raised that job's peak by 20-30 MB before it did.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Optional

from ftrun.contract import MALLOC_ENV as ENV

LIBRARIES = {"jemalloc": ("jemalloc",), "tcmalloc": ("tcmalloc_minimal", "tcmalloc")}
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
"""jemalloc's options for a run (``MALLOC_CONF``): freed pages stay with the process for reuse, none decay."""


def library(choice: str) -> Optional[str]:
    """The shared library (its soname, which the dynamic loader finds) for ``choice``; None if absent."""
    for name in LIBRARIES.get(choice, ()):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def in_use() -> str:
    """The allocator this process runs with: jemalloc, tcmalloc or system."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((c for c in LIBRARIES if any(n in preload for n in LIBRARIES[c])), "system")


def chosen() -> str:
    """The allocator a run started now gets: ``FTRUN_MALLOC``'s choice if this machine has it, else system."""
    choice = os.environ.get(ENV, "jemalloc")
    return choice if choice != "system" and library(choice) else "system"


def options() -> str:
    """The ``MALLOC_CONF`` a run started now gets with jemalloc ('' for the other allocators)."""
    return os.environ.get("MALLOC_CONF", JEMALLOC_CONF) if chosen() == "jemalloc" else ""


def release() -> bool:
    """Hand the pages jemalloc keeps for reuse back to the kernel now (every arena's ``purge``); whether it did
    (False with another allocator)."""
    if in_use() != "jemalloc":
        return False
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return False
    return mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0)) == 0  # 4096: MALLCTL_ARENAS_ALL


def reexec() -> None:
    """Start this same command again with the allocator ``FTRUN_MALLOC`` names preloaded; return when
    that is done already, not wanted, or the library is not on this machine."""
    choice = os.environ.get(ENV, "jemalloc")
    if choice == "system" or in_use() != "system" or not getattr(sys, "orig_argv", None):
        return
    lib = library(choice)
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
    if choice == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
