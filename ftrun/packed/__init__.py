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

Not wired into the sweeper yet. What that needs (issue 23):

* ``sweeper/sweep.py`` (``_keep_slots_busy``): with a new ``hydra.sweeper.pack: K`` setting (checked in
  ``sweeper/setting_checks.py``), ask up to K trials for a free slot, compose them, group them with
  :func:`compatible` (the rest run alone as now), and hand a group to the slot's worker as one job.
* ``sweeper/worker.py``: a "pack" message carrying K trial specs; the worker composes each config as it
  does now and calls :func:`train_packed` with each trial's own run dir. The per-trial environment the
  worker sets today (``FTRUN_OPTUNA_TRIAL_ID`` ... in ``ftrun.contract``) is per process, so the trial ids
  must travel in the message instead; the worker answers with K outcomes.
* pruning (``sweeper/trial.py``): the ``on_evaluate`` hook of :func:`train_packed` is where the study's
  ``trial.report`` / ``should_prune`` go for each run (True stops that run alone, ``pruned: true``);
  ``hydra.sweeper.rung_branch`` needs its decay branch trained per run and is refused in a pack for now.
* tracking: one ``ftrun.tracking.make_tracker`` per run (child of the sweep's parent run), fed from each
  run's log history and finished with its status; today a packed run records no MLflow run.
* ``sweeper/slot_memory.py``: a pack's estimate is the base once plus K x (adapter, optimizer state, the
  activations of K micro-batches); ``ftrun/estimate`` has the pieces.
* ``sweeper/compute.py`` and ``sweeper/budget.py``: each packed run's ``train_time_s`` is the pack's wall
  time while it was in the pack, so trial-seconds must be divided by the pack's size (or charged once
  per pack) or the budget counts the device K times; ``result.json`` says ``packed: true``.
* ``sweeper/outcome.py``: a packed trial's end comes from its ``result.json`` (finished, pruned,
  diverged), not from the worker's exit status, which the K runs share; a crash of the worker fails
  all K (``sweeper/stale_trials.py`` recovers each from its own run dir as now).
* signals: Ctrl-C or SIGTERM during a pack stops all K runs; each must get its KILLED status.
"""

from ftrun.packed.compat import compatible
from ftrun.packed.train import train_packed

__all__ = ["compatible", "train_packed"]
