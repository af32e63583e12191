"""Packed trials (issue 23): up to K compatible LoRA runs trained at once over ONE frozen base.

A LoRA sweep trains the same frozen base again and again with small adapters that differ in lr,
rank, alpha, dropout, seed. :func:`train_packed` takes K composed run configs (what
:func:`ftrun.train.run` receives), builds the base once, attaches one peft LoRA adapter per run
and trains them together: each step is one forward and one backward over the runs' concatenated
micro-batches, every row going through its own run's adapter (:class:`Router`; runs of equal
rank share one ``bmm`` over their stacked A and B, others get their own slice), so the base
layers see one large batch. Each run keeps its own everything else, built from the same library
pieces its alone run uses:

* adapter init: peft's, after ``set_seed(seed)`` as :func:`ftrun.stages.common.prepare_data`
  seeds before the model is built, so A and B start equal to the alone run's;
* data order and batches: the run's own transformers ``Trainer`` (built, never trained) gives its
  train dataloader (accelerate's seedable sampler, ``data_seed``, ``set_epoch`` per epoch) and
  its collator; epochs, the last short accumulation step of an epoch and ``max_steps`` as
  ``Trainer._inner_training_loop`` counts them;
* loss: the model's own ``loss_function`` with the run's ``num_items_in_batch`` (its tokens over
  the accumulated micro-batches), as ``Trainer.compute_loss`` does; the K losses are summed for one
  backward (the adapters are disjoint and the base frozen, so each gets only its own gradient);
* optimizer and schedule: ``Trainer.get_optimizer_cls_and_kwargs`` and ``Trainer.create_scheduler``
  of that Trainer, over the run's adapter parameters only; clipping at ``max_grad_norm`` over them;
* evaluation: the eval loss as ``Trainer.evaluation_loop`` averages it (per batch mean, weighted by
  rows) and teacher-forced exact match (:func:`ftrun.fit.exact_match`);
* result: ``result.json`` through :func:`ftrun.fit._write_result`, ``config_resolved.yaml``,
  ``trainer_state.json`` (its log history) and the adapter in ``model/``.

A run whose loss or gradients stop being finite stops alone (``status: diverged``, as
:mod:`ftrun.divergence` reports it); a run that reaches its last step leaves the pack; the others
go on. :func:`compatible` says why K configs cannot share a pack.

Dropout: with ``method.dropout > 0`` each run draws its masks from its own ``torch.Generator``,
seeded with the run's seed (the global RNG's state when the alone run's Trainer starts training:
its ``__init__`` seeds it, and in training only dropout draws from it), with the shape of the run's
own micro-batch, in the same layer order; so a run's masks neither depend on the others in its
pack nor differ from its alone run's (on CPU, where torch's dropout is ``bernoulli_`` on the
default generator; CUDA's fused dropout kernel draws differently, so there a packed run with
dropout is a valid run of the same distribution, not the alone run's bit pattern).

Rounding: a run's rows are right-padded to the pack's widest micro-batch, so its matmuls and attention
reduce over longer rows than alone; the real tokens' values are the same up to float rounding (~1e-8
relative), and for most runs the losses stay within 1e-7 of the alone run's over the whole run. A run
whose training amplifies noise (in bench/packed_trials.py at micro-batch 2: lr 4e-3, rank 64, alpha
128, every step's gradient clipped) drifts from that rounding: 1e-8 at step 30, 2% by step 50. The
same run alone in a pack of K = 1, or packed with runs of its own width, stays within 1e-7, so the
drift comes from the padding, not from routing, bmm, or the optimizer. A pack trains padded rows whatever
``data.padding_free`` says, so its runs equal their alone runs with ``data.padding_free=false``; against the
padding-free default they agree to rounding without dropout, and with dropout draw their masks over other
shapes (valid runs of the same distribution, not the same bits). Packing rows without padding
(one flattened row per micro-batch with restarting ``position_ids``, as ``data.packing`` does, routed
by token ranges instead of rows) would remove it; not done yet.

Nothing heavy is imported at module level: torch, transformers and peft load inside the functions.

In a sweep, ``hydra.sweeper.pack=K`` hands packs to a slot's warm worker (:mod:`sweeper.pack`): the sweeper
composes each trial, packs the :func:`compatible` ones, and the worker calls :func:`train_packed` with each trial's
run dir; ``on_start`` opens each run's MLflow child run (:mod:`ftrun.packed.tracking`), ``on_evaluate`` reports to
the run's own Optuna trial and asks its pruner, ``on_end`` finishes its MLflow run and answers the sweeper for that
trial alone. Under ``hydra.sweeper.pruner=promotion`` a member the rule pauses at a rung leaves the pack with a
Trainer checkpoint (:mod:`ftrun.packed.checkpoint`) and ``status: paused``; promoted, it resumes alone from it, in its
same Optuna trial and MLflow run, as a trial paused alone does. When a member leaves, the sweeper may send new
compatible trials to join the pack; ``admit`` hands them to :func:`train_packed`, which builds each run as it builds
the first ones (:class:`ftrun.packed.train.Pack`) and trains it from its first step, while the adapters and optimizer
states of the runs that left are freed. ``pack: auto`` sizes packs by the memory estimate of the whole pack
(:mod:`ftrun.estimate.pack`). Not done yet (issue 23): packs under ``rung_branch`` (a decay branch per run: those
sweeps run unpacked); a promoted trial resuming into a pack (it resumes alone).
"""

from ftrun.packed.compat import compatible
from ftrun.packed.train import train_packed

__all__ = ["compatible", "train_packed"]
