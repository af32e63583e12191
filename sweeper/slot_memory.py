"""Whether a trial's configuration fits its slot's memory, checked before launch.

The memory per device is ``hydra.sweeper.memory_limit_gb`` when set, else the smallest of the
slot's GPUs as ``nvidia-smi`` reports it; a CPU slot is not checked. The estimate is
:func:`ftrun.estimate.fits` on the trial's composed config.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any, List, Optional

from sweeper.slots import Slot

log = logging.getLogger("ftrun.sweeper")


def slot_memory_bytes(limit_gb: Optional[float], slot: Slot) -> Optional[float]:
    """Memory per device for the fit check: ``memory_limit_gb`` if set, else the smallest of the slot's GPUs
    (nvidia-smi), else None (a CPU slot: no check)."""
    if limit_gb is not None:
        return float(limit_gb) * 2**30  # > 0: checked with the other settings (sweeper.settings)
    if not slot.gpus:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = {i.strip(): float(m) * 2**20 for i, m in (line.split(",") for line in out.strip().splitlines())}
    sizes = [total[g] for g in slot.gpus if g in total]
    return min(sizes) if sizes else None


def pack_too_big(cfgs: List[Any], slot: Slot, limit_gb: Optional[float], slots: int) -> Optional[str]:
    """Why a pack of these composed trial configs cannot fit ``slot`` (``pack=auto``), or None. A CPU slot without
    ``memory_limit_gb`` gets an equal share of the machine's available memory (``slots`` slots share it)."""
    from ftrun.estimate.pack import pack_fits

    limit = slot_memory_bytes(limit_gb, slot)
    if limit is None:
        limit = available_bytes() / max(1, slots)
    try:
        ok, reason = pack_fits(cfgs, limit, device="cuda" if slot.gpus else "cpu")
    except Exception as e:  # noqa: BLE001 - no estimate: the pack stays as it is (the trial waits)
        return f"no memory estimate for a pack of {len(cfgs)} ({e})"
    return None if ok else reason


def available_bytes() -> float:
    """The machine's available memory (Linux ``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def too_big(args: List[str], slot: Slot, limit_gb: Optional[float], label: str) -> Optional[str]:
    """Why the trial with these command-line ``args`` cannot fit ``slot``, or None (it fits, the slot is not
    checked, or no estimate can be made: then the trial runs)."""
    limit = slot_memory_bytes(limit_gb, slot)
    if limit is None:
        return None
    from ftrun.estimate import fits
    from sweeper.trial_env import compose_trial

    try:
        cfg = compose_trial(args)[0]
        ok, reason = fits(cfg, limit, devices=max(1, slot.processes))
    except Exception as e:  # noqa: BLE001 - an estimate that cannot be made does not stop the trial
        log.warning("%s: no memory estimate (%s); running it", label, e)
        return None
    return None if ok else reason
