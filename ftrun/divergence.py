"""Stop a run whose loss or gradients stop being finite (or explode, or die).

transformers' Trainer trains on through NaN: with its default
``logging_nan_inf_filter`` it even logs a made-up loss, and a run at ``lr=1e3``
used to finish its 300 steps of NaN gradients with exit status 0.
:func:`divergence_callback` looks at the gradients before every optimizer step
(after clipping, before the weights change) and at every logged loss; the first
non-finite value raises :class:`Diverged`, so the weights are never updated with
NaN. :func:`ftrun.fit.train_and_report` turns it into ``status: diverged`` in
``result.json`` and a FAILED MLflow run tagged with the reason; ``python -m
ftrun`` (and a warm sweep worker) exits with :data:`ftrun.exit_status.EXIT_DIVERGED`.

A run can also die without a NaN: at an absurd learning rate the activations overflow, RMSNorm's
``x * rsqrt(mean(x**2))`` turns them into zeros, the model outputs the same distribution for every input
(its loss sits at log(vocab)) and every gradient is exactly 0 from then on. Whether a CPU or GPU gets NaN or
zeros there depends on its kernels; :data:`DEAD_PATIENCE` steps in a row whose every trainable gradient is 0
count as a divergence too (:class:`ZeroGradients`). And where the kernels keep the numbers finite, a loss that
explodes stays finite too (2.6 to 84,296 in one step of a full fine-tune at lr=50): a logged train loss over
:data:`LOSS_BLOWUP` times the run's first (or 1, whichever is larger) is a divergence (:class:`LossBlowUp`).

Under ``precision=fp16`` the gradient scaler skips steps whose gradients
overflowed and lowers its scale; that is its job, not a divergence, so only
:data:`FP16_PATIENCE` such steps in a row count as one.
"""

from __future__ import annotations

import math
from typing import Optional

STATUS = "diverged"
FP16_PATIENCE = 8  # consecutive overflowing steps the fp16 grad scaler may skip before we call it a divergence
DEAD_PATIENCE = 3  # consecutive steps with every trainable gradient exactly 0 before we call the run dead
LOSS_BLOWUP = 100.0  # a train loss this many times the first logged one (or 1) has diverged


class Diverged(RuntimeError):
    """The run's loss or gradient norm became NaN or infinite at ``step``."""

    def __init__(self, what: str, value: float, step: int, lr: Optional[float] = None, detail: str = ""):
        self.what, self.value, self.step, self.lr = what, value, step, lr
        at_lr = f" (learning rate {lr:g})" if lr is not None else ""
        self.reason = f"{what} is {value} at step {step}{at_lr}{detail}"
        super().__init__(f"diverged: {self.reason}; the run stopped there. "
                         "Lower lr, or keep optimizer.max_grad_norm > 0 to clip gradients")


class ZeroGradients:
    """Counts steps whose every trainable gradient is exactly 0; :meth:`check` raises :class:`Diverged` at the
    :data:`DEAD_PATIENCE`-th in a row. One rule for the Trainer's callback and for a pack's runs."""

    def __init__(self):
        self.steps = 0

    def check(self, largest: float, step: int, lr: Optional[float]) -> None:
        """``largest``: this step's largest |gradient| (or the gradient norm), finite."""
        self.steps = self.steps + 1 if largest == 0.0 else 0
        if self.steps >= DEAD_PATIENCE:
            raise Diverged("every gradient", 0.0, step, lr,
                           f", {self.steps} steps in a row: the model's outputs collapsed")


class LossBlowUp:
    """Remembers the run's first logged train loss; :meth:`check` raises :class:`Diverged` at a loss over
    :data:`LOSS_BLOWUP` times it (or times 1, so that a small first loss is no hair trigger)."""

    def __init__(self):
        self.first: Optional[float] = None

    def check(self, loss: float, step: int, lr: Optional[float]) -> None:
        """``loss``: a logged train loss, finite."""
        if self.first is None:
            self.first = loss
        elif loss > LOSS_BLOWUP * max(1.0, self.first):
            raise Diverged("the train loss", loss, step, lr,
                           f", over {LOSS_BLOWUP:g}x the first logged loss {self.first:.4g}")


def _max_abs_grad(model, optimizer=None) -> Optional[float]:
    """The largest |gradient| over the trainable parameters (NaN if any is NaN), None if no gradients.

    The optimizer's parameters when it is given (the trainable ones, without walking the model's modules), their
    gradients' largest values in one multi-tensor op per device and dtype: a per-tensor loop cost the tiny model's
    LoRA run ~1 ms a step."""
    import torch

    params = ([p for group in optimizer.param_groups for p in group["params"]] if optimizer is not None
              else [p for p in model.parameters() if p.requires_grad])
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    by_kind = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    maxima = [torch.stack(torch._foreach_norm(group, float("inf"))).max().float().cpu() for group in by_kind.values()]
    return float(torch.stack(maxima).max())


def divergence_callback(patience: int = 1):
    """A :class:`DivergenceWatch` as a transformers ``TrainerCallback`` (the class is built on first use, so
    that importing :class:`Diverged` does not import transformers: ``python -m ftrun`` catches it before
    its checks have run, and a refused run should take a fraction of a second)."""
    global _CLASS
    if _CLASS is None:
        from transformers import TrainerCallback

        _CLASS = type("DivergenceCallback", (DivergenceWatch, TrainerCallback), {})
    return _CLASS(patience)


_CLASS = None


class DivergenceWatch:
    """Raises :class:`Diverged` at the first non-finite gradient (before the optimizer step) or logged loss, at
    the :data:`DEAD_PATIENCE`-th step in a row whose gradients are all 0, or at an exploded logged loss."""

    def __init__(self, patience: int = 1):
        self.patience = patience
        self._bad_steps = 0
        self._zero = ZeroGradients()
        self._blowup = LossBlowUp()

    def on_train_begin(self, args, state, control, **kwargs):
        if args.fp16:
            self.patience = max(self.patience, FP16_PATIENCE)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            return
        value = _max_abs_grad(model, optimizer)
        if value is None:
            return
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        if math.isfinite(value):
            self._bad_steps = 0
            self._zero.check(value, state.global_step + 1, lr)
            return
        self._bad_steps += 1
        if self._bad_steps >= self.patience:
            raise Diverged("the gradient", value, state.global_step + 1, lr)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # the loss only: an fp16 step that the scaler skipped logs an infinite grad_norm legitimately
        value = (logs or {}).get("loss")
        if not isinstance(value, (int, float)):
            return
        lr = (logs or {}).get("learning_rate")
        if not math.isfinite(value):
            raise Diverged("the train loss", value, state.global_step, lr)
        self._blowup.check(value, state.global_step, lr)
