"""A rung's decay branch: what a warmup-stable-decay trial would score if it decayed now.

At a rung (an evaluation the pruner is asked about) the trial keeps its stable-phase state in memory, trains a
few more steps with the learning rate decaying to 0 in the run's own decay shape, evaluates, and puts the state
back, so the trial goes on exactly as it would have without the branch. A cooldown from a stable-phase
checkpoint predicts the end of a full run (Hu et al. 2024, MiniCPM; Hägele et al. 2024), which a mid-schedule
evaluation does not. Turned on by ``hydra.sweeper.rung_branch`` (:class:`sweeper.trial.PruningCallback` calls
:func:`run_branch`); everything here goes through the Trainer's own pieces: its train dataloader, training
step, gradient clipping, optimizer and evaluation loop.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class Branch:
    """One branch: its optimizer steps, its seconds (training and evaluation) and its evaluation's metrics."""

    steps: int
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)


def branch_length(share: float, steps_so_far: int) -> int:
    """Optimizer steps of a branch: ``share`` of the steps trained so far, at least 1."""
    return max(1, round(share * steps_so_far))


def run_branch(trainer, share: float, loss_only: bool = True) -> Branch:
    """Train a decay branch from the trainer's current state, evaluate it, and restore the state bitwise.

    ``loss_only``: evaluate the loss alone (the objective is eval_loss or eval_perplexity), without the
    Trainer's compute_metrics.
    """
    if trainer.args.world_size > 1:
        raise RuntimeError("hydra.sweeper.rung_branch runs in one process; the sweep should have refused "
                           "gpus_per_trial > 1")
    steps = branch_length(share, trainer.state.global_step)
    start = time.perf_counter()
    saved = _Snapshot.take(trainer)  # before the branch's dataloader, which may draw from the torch RNG
    try:
        _train_decay(trainer, steps)
        metrics = _evaluate(trainer, loss_only)
    finally:
        saved.restore(trainer)
    return Branch(steps, time.perf_counter() - start, metrics)


# ---------------------------------------------------------------------------
# the state a branch changes


@dataclass
class _Snapshot:
    """In memory: the trainable parameters and their gradients, the optimizer's and LR scheduler's state,
    the gradient scaler's, every RNG, and the Trainer's accumulation bookkeeping."""

    params: List[Tuple[Any, Any, Any]]
    optimizer: dict
    scheduler: Optional[dict]
    scaler: Optional[dict]
    rng: Dict[str, Any]
    sync_gradients: bool
    accumulation: Any

    @classmethod
    def take(cls, trainer) -> "_Snapshot":
        # held in host memory: under full fine-tuning the trainable weights, their gradients and Adam's two
        # moments are four copies of the model, which a GPU sized for training does not have room for
        params = [(p, _host(p.detach()), None if p.grad is None else _host(p.grad.detach()))
                  for p in trainer.model.parameters() if p.requires_grad]
        scheduler = trainer.lr_scheduler
        scaler = getattr(trainer.accelerator, "scaler", None)
        return cls(params=params, optimizer=_host(trainer.optimizer.state_dict()),
                   scheduler=copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
                   scaler=copy.deepcopy(scaler.state_dict()) if scaler is not None else None,
                   rng=_rng_states(), sync_gradients=trainer.accelerator.gradient_state.sync_gradients,
                   accumulation=getattr(trainer, "current_gradient_accumulation_steps", None))

    def restore(self, trainer) -> None:
        import torch

        with torch.no_grad():
            for p, value, grad in self.params:
                p.copy_(value)
                p.grad = None if grad is None else grad.to(p.device, copy=True)
        # load_state_dict moves the state to each parameter's device; the scheduler's pops keys from what it is
        # given: hand both a copy
        trainer.optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if self.scheduler is not None:
            trainer.lr_scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        if self.scaler is not None:
            trainer.accelerator.scaler.load_state_dict(self.scaler)
        _set_rng_states(self.rng)
        trainer.accelerator.gradient_state._set_sync_gradients(self.sync_gradients)
        trainer.current_gradient_accumulation_steps = self.accumulation


def _host(value):
    """A copy of ``value`` (a tensor, or a state dict's nesting of them) with every tensor in host memory."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host(v) for v in value)
    return copy.deepcopy(value)


def _rng_states() -> Dict[str, Any]:
    """python, numpy, torch CPU and (when there is one) CUDA generators, as transformers checkpoints them."""
    import random

    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


def _set_rng_states(states: Dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.random.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------
# the branch


def _train_decay(trainer, steps: int) -> None:
    """``steps`` optimizer steps as the Trainer takes them (micro-batches of gradient accumulation, clipping
    at args.max_grad_norm), on a separate pass over the training data, the learning rate of every parameter
    group decaying from its current value to the run's floor in the run's decay shape."""
    args, model, optimizer = trainer.args, trainer.model_wrapped, trainer.optimizer
    factor = decay_factor(args.lr_scheduler_kwargs or {}, steps)
    start_lrs = [group["lr"] for group in optimizer.param_groups]
    loader = trainer.get_train_dataloader()  # a fresh shuffle: the run's own iterator is not advanced
    batches = _endless(loader)
    try:
        for i in range(steps):
            for group, lr in zip(optimizer.param_groups, start_lrs):
                group["lr"] = lr * factor(i)
            samples, num_items = trainer.get_batch_samples(batches, args.gradient_accumulation_steps, args.device)
            trainer.current_gradient_accumulation_steps = len(samples)
            for j, inputs in enumerate(samples):
                # the last micro-batch syncs, as in the Trainer's loop (the optimizer skips an unsynced step)
                trainer.accelerator.gradient_state._set_sync_gradients(j == len(samples) - 1)
                trainer.training_step(model, inputs, num_items)
            if args.max_grad_norm > 0:
                trainer._clip_grad_norm(model)  # the Trainer's own clipping (accelerate's, mixed meshes too)
            optimizer.step()
            model.zero_grad()
    finally:
        batches.close()
        getattr(loader, "end", lambda: None)()  # a pass left unfinished: out of accelerate's gradient state


def decay_factor(scheduler_kwargs: Dict[str, Any], steps: int):
    """Step i's share of the starting learning rate over a ``steps``-step decay: transformers' own
    warmup-stable-decay curve with no warmup and no stable phase, in the run's ``decay_type`` and
    ``min_lr_ratio`` (scheduler=wsd's defaults: cosine, 0)."""
    from transformers.optimization import _get_wsd_scheduler_lambda

    return partial(_get_wsd_scheduler_lambda, num_warmup_steps=0, num_stable_steps=0, num_decay_steps=steps,
                   warmup_type="linear", decay_type=str(scheduler_kwargs.get("decay_type", "cosine")),
                   min_lr_ratio=float(scheduler_kwargs.get("min_lr_ratio", 0.0)),
                   num_cycles=float(scheduler_kwargs.get("num_cycles", 0.5)))


def _endless(loader):
    """The loader's batches, pass after pass (a branch may be longer than the data)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("hydra.sweeper.rung_branch: the training data gave no batch")


def _evaluate(trainer, loss_only: bool) -> Dict[str, float]:
    """The Trainer's evaluation loop on its eval data, without ``evaluate()``: no callbacks (the pruning
    callback would come back here), nothing logged as the run's eval metrics."""
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description="Rung branch evaluation",
                                     prediction_loss_only=True if loss_only or trainer.compute_metrics is None
                                     else None, metric_key_prefix="eval")
    return {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
