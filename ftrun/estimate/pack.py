"""The process peak of several LoRA trials trained as one pack (``hydra.sweeper.pack``, :mod:`ftrun.packed`).

A pack holds the frozen base once; each member adds its adapters, their gradients and optimizer states; one
training step runs forward and backward over every member's micro-batch concatenated, so the activations and the
loss's buffers are the members' summed. The optimizer step and evaluation run one member at a time (the largest
counts). The runtime's baseline (and a GPU's context and reserve) is the process's, once.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from ftrun.estimate.breakdown import gib
from ftrun.estimate.process import ALLOCATOR_RESERVE, estimate


def pack_peak(cfgs: Sequence, device=None) -> Tuple[float, str]:
    """(estimated peak bytes of the process training ``cfgs`` in one pack, the phase where it falls)."""
    ests = [estimate(c, device=device) for c in cfgs]
    first = ests[0]
    base = first.weights - first.gradients  # LoRA: the gradients are the adapters' size, in their dtype
    held = base + sum(e.gradients + e.optimizer for e in ests)  # + every member's adapters and optimizer states
    phases = {"load": first.load_buffers + base,
              "backward": held + sum(e.activations + e.loss_buffers for e in ests),
              "optimizer step": held + sum(e.gradients for e in ests) + max(e.step_temporaries for e in ests),
              "eval": held + max(e.eval_buffers for e in ests)}
    phase = max(phases, key=phases.get)
    reserve = phases[phase] * ALLOCATOR_RESERVE if first.allocator else 0.0  # a GPU's caching allocator
    return float(phases[phase] + first.runtime + reserve), phase


def pack_fits(cfgs: Sequence, limit_bytes: float, margin: float = 0.1, device=None) -> Tuple[bool, str]:
    """Whether a pack of ``cfgs`` fits ``limit_bytes`` with ``margin`` to spare (as :func:`ftrun.estimate.fits`)."""
    peak, phase = pack_peak(cfgs, device=device)
    need = peak * (1 + margin)
    return need <= limit_bytes, (f"a pack of {len(cfgs)}: estimated peak {gib(peak)} at the {phase} "
                                 f"(+{margin:.0%} margin = {gib(need)}) vs {gib(limit_bytes)}")
