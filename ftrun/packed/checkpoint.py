"""A packed run's adapter on disk, alone (:func:`save_adapter`), and its pause (``hydra.sweeper.pruner=promotion``):
the checkpoint its alone run resumes from (:func:`save_pause_checkpoint`).

A run that pauses at a rung leaves the pack with ``checkpoint-<step>`` in its run directory, in the layout the
transformers ``Trainer`` writes and reads when it resumes (``resume=auto``): the run's adapter alone at the top
(peft's ``adapter_config.json`` + ``adapter_model.safetensors``), ``optimizer.pt`` and ``scheduler.pt`` (the run's
own AdamW and schedule, the parameter groups in the order ``Trainer.create_optimizer`` makes them), ``rng_state.pth``
and ``trainer_state.json`` (written last: :func:`ftrun.config.last_checkpoint` skips a checkpoint without it). The
Trainer's own ``_save_optimizer_and_scheduler`` and ``_save_rng_state`` write them, through the run's Trainer
(built, never trained). So a promoted trial resumes alone, in a warm worker, exactly as a trial paused alone does:
the sweeper cannot tell where the first segment trained.

The global RNG saved is the run's own generator: in the pack it stands in for the alone run's global RNG (its
dropout masks and its DataLoaders' base seeds come from it), so the resumed run goes on drawing the same stream.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_pause_checkpoint(model, run, tokenizer, router) -> Path:
    """Write ``run``'s ``checkpoint-<global_step>`` for the alone Trainer to resume; its path."""
    import torch
    from transformers.trainer_callback import ExportableState

    from ftrun.contract import TRAINER_STATE

    trainer = run.trainer
    out = Path(run.run_dir) / f"checkpoint-{run.global_step}"
    save_adapter(model, run, tokenizer, out)
    trainer.optimizer, trainer.lr_scheduler = run.optimizer, run.scheduler
    trainer._save_optimizer_and_scheduler(str(out))
    generator = router.generators.get(run.adapter)
    saved = torch.get_rng_state()
    try:
        if generator is not None:
            torch.set_rng_state(generator.get_state())
        trainer._save_rng_state(str(out))
    finally:
        torch.set_rng_state(saved)
    state = trainer.state
    state.compute_steps(trainer.args, run.max_steps)
    state.max_steps, state.global_step = run.max_steps, run.global_step
    state.num_train_epochs = max(1, -(-run.max_steps // max(run.updates_per_epoch, 1)))
    state.epoch = run.epoch + run.update_in_epoch / max(run.updates_per_epoch, 1)
    state.train_batch_size = trainer._train_batch_size
    state.num_input_tokens_seen = run.tokens
    state.log_history = [dict(h) for h in run.history]
    for cb in [c for c in trainer.callback_handler.callbacks + [trainer.control] if isinstance(c, ExportableState)]:
        state.stateful_callbacks[cb.__class__.__name__] = cb.state()
    state.save_to_json(str(out / TRAINER_STATE))
    json.loads((out / TRAINER_STATE).read_text())  # written whole, or the pause fails here, not at its resume
    return out


def save_adapter(model, run, tokenizer, model_dir: Path) -> None:
    """The run's adapter alone, as the alone run saves it (adapter_config.json + weights at the top)."""
    import shutil

    tmp = model_dir.parent / (model_dir.name + ".packing")
    model.save_pretrained(str(tmp), selected_adapters=[run.adapter])
    src = tmp / run.adapter if (tmp / run.adapter).is_dir() else tmp
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.move(str(src), str(model_dir))
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(model_dir))

