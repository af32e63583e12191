"""The peak a run dies of, not only its tensors': on CPU the process's resident memory (the runtime's
own baseline, measured once per machine, plus the tensors); on a GPU the device memory (the tensors,
plus the CUDA context, plus the caching allocator's reserve and fragmentation). :func:`fits` and the
sweeper's memory check use that figure; the tensors' peak stays a line of the breakdown.

GPU terms (README, "Memory estimate"): ``peak = tensors x (1 + ALLOCATOR_RESERVE) + CUDA_CONTEXT``.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

from ftrun.estimate.baseline import runtime_baseline
from ftrun.estimate.breakdown import Estimate, gib
from ftrun.estimate.tensors import tensor_estimate

log = logging.getLogger("ftrun.estimate")

CUDA_CONTEXT = int(1.3e9)
"""Device memory the CUDA context and kernels take before any tensor, which ``max_memory_allocated``
does not count (PyTorch, ``torch.cuda.memory_allocated``: "some context needs to be created on GPU").
Hugging Face's "Model training anatomy" (transformers docs, model_memory_anatomy) measures 1.3 GB for
it after ``torch.ones((1, 1)).to("cuda")`` and says it varies by GPU; CUDA's lazy module loading can
make it smaller, so this errs on the side of not launching what would run out of memory."""
ALLOCATOR_RESERVE = 0.15
"""Reserved above allocated by PyTorch's caching allocator (block rounding, cached free blocks,
fragmentation), as a share of the tensors' peak. The same PyTorch note says unused memory "can be
held by the caching allocator"; ZeRO (Rajbhandari et al. 2020, arXiv 1910.02054, section on residual
memory) reports runs out of memory with over 30 % still free through fragmentation in extreme cases.
15 % is half that extreme, not a figure measured here (no GPU in this project's checks)."""


def estimate(cfg, devices: int = 1, sharding: str = "none", device: Optional[str] = None,
             measure_baseline: bool = True) -> Estimate:
    """Peak memory per device of the run ``cfg`` (a composed run config) on ``devices`` devices.

    Args:
        cfg: the run's config, as ``python -m ftrun`` composes it.
        devices: processes the run is launched with (``gpus_per_trial``).
        sharding: none (plain DDP when devices > 1), zero1, zero2, zero3 or fsdp (full shard).
        device: cpu or cuda; default: cuda when one is visible.
        measure_baseline: on CPU, measure the runtime's baseline now when it is not cached yet
            (about 15 s, once per machine); False leaves it out and says so.
    """
    device = device or default_device()
    est = tensor_estimate(cfg, devices=devices, sharding=sharding, device=device)
    if device == "cpu":
        est.runtime, est.runtime_source = runtime_baseline(str(cfg.method.name), measure=measure_baseline,
                                                           tracking=bool(cfg.tracking.enabled))
        est.allocator = 0
    else:
        est.runtime, est.runtime_source = CUDA_CONTEXT, "CUDA context and kernels (HF model_memory_anatomy; README)"
        est.allocator = int(est.tensor_peak * ALLOCATOR_RESERVE)
    est.peak = est.tensor_peak + est.runtime + est.allocator
    return est


def fits(cfg, limit_bytes: float, devices: int = 1, sharding: str = "none", device: Optional[str] = None,
         margin: float = 0.1) -> Tuple[bool, str]:
    """Whether the run's process fits ``limit_bytes`` per device with ``margin`` to spare, and a reason to record.

    The peak compared is the process's (:func:`estimate`): tensors plus the runtime's baseline on
    CPU, plus the CUDA context and allocator reserve on a GPU; the margin (10 % by default) covers
    the estimate's own error.
    """
    est = estimate(cfg, devices=devices, sharding=sharding, device=device)
    need = est.peak * (1 + margin)
    ok = need <= limit_bytes
    verdict = "fits" if ok else "does not fit"
    biggest = {
        "load": f"load buffers {gib(est.load_buffers)}",
        "backward": f"activations {gib(est.activations)} + loss buffers {gib(est.loss_buffers)} "
                    f"(batch_size={cfg.batch_size} x cutoff_len={cfg.data.cutoff_len})",
        "optimizer step": f"step temporaries {gib(est.step_temporaries)} (optimizer={cfg.optimizer.name})",
        "eval": f"eval buffers {gib(est.eval_buffers)} (train.eval_batch_size={cfg.train.eval_batch_size} "
                f"x cutoff_len={cfg.data.cutoff_len})",
    }[est.phase]
    reason = (f"{verdict}: estimated peak {gib(est.peak)} per device (+{margin:.0%} margin = {gib(need)}) "
              f"vs limit {gib(limit_bytes)}; tensors {gib(est.tensor_peak)} at the {est.phase} + "
              f"{est.overhead_name()} {gib(est.runtime + est.allocator)}: weights {gib(est.weights)}, grads "
              f"{gib(est.gradients)}, optimizer {gib(est.optimizer)}, {biggest}; method={est.method}")
    return ok, reason


def log_estimate(cfg) -> Optional[Estimate]:
    """Log the estimate's one line at the start of a run; a model the estimate cannot read only warns.

    A run does not stop to measure the runtime's baseline: without a cached one the line says so.
    """
    try:
        sharding = str(cfg.sharding.name) if "sharding" in cfg else "none"  # the run's own (offload not modelled)
        est = estimate(cfg, devices=int(os.environ.get("WORLD_SIZE", "1")), sharding=sharding,
                       measure_baseline=False)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        log.warning("Memory estimate unavailable: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    log.info("%s", est.line())
    return est


def default_device() -> str:
    """cuda when one is visible, else cpu."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"
