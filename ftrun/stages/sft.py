"""stage=sft: supervised fine-tuning with transformers' Trainer.

data (conversations rendered with the chat template, answers masked, packed with
``data.packing``) -> model -> method -> Trainer -> train -> evaluate -> save ->
report. :func:`build_trainer` is the one place where ftrun hands the Trainer its
model, data, optimizer settings and callbacks. Returns eval loss (or
``objective=eval_exact_match``, answers generated greedily in one forward pass).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from ftrun.model import apply_method, load_model
    from ftrun.stages.common import log_start, prepare_data, start_from_run, start_tracking
    from ftrun.fit import current_phases, train_and_report
    from sweeper.trial import pruning_callback

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    cfg = start_from_run(cfg, run_dir)  # continue from an earlier run's model, e.g. a pt run

    log.info("Loading model '%s' (method %s)", cfg.model.name, cfg.method.name)
    model = apply_method(load_model(cfg), cfg)
    tracker = start_tracking(cfg, run_dir, overrides)
    log_start(tracker, model, data)
    log.info("Building trainer (optimizer=%s, scheduler=%s, precision=%s)",
             cfg.optimizer.name, cfg.scheduler.name, cfg.precision)
    pruning = pruning_callback(cfg)  # None unless a sweep started this run as an Optuna trial
    trainer = build_trainer(cfg, model, data.tokenizer, data.train, data.eval, run_dir,
                            callbacks=[tracker.callback(), pruning])
    current_phases().mark("trainer")
    return train_and_report(cfg, trainer, data.tokenizer, tracker, run_dir)


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, run_dir: Path, callbacks=()):
    """transformers' Trainer with ftrun's settings, data collator, metrics and callbacks."""
    from transformers import Trainer

    from ftrun.data import make_collator, with_positions
    from ftrun.fit import argmax_logits, custom_optimizer, training_arguments
    from ftrun.linear_cross_entropy import trainer_class

    args = training_arguments(cfg, run_dir, has_eval=eval_ds is not None, num_examples=len(train_ds))
    optimizers = custom_optimizer(cfg, model, args)  # BAdam; (None, None): the Trainer builds it
    if cfg.method.name in ("lora", "qlora") and cfg.method.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        opt_kwargs = {k: v for k, v in opt_kwargs.items() if k != "lr"}
        optimizer = create_loraplus_optimizer(model, opt_cls, lr=cfg.optimizer.lr,
                                              loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
                                              weight_decay=cfg.optimizer.weight_decay, **opt_kwargs)
        optimizers = (optimizer, None)
    metrics = None
    if eval_ds is not None:  # exact match, and the scores of generated answers with train.generate
        from ftrun.gen_eval import EvalMetrics

        metrics = EvalMetrics(tokenizer, eval_ds, cfg.train.generate)
        metrics.model = model
    collator = make_collator(cfg.data, tokenizer, model.config._attn_implementation)  # the attention as loaded
    if getattr(collator, "flatten", False):  # padding-free: every training micro-batch is one row (data/collate.py)
        if cfg.data.padding_free and "position_ids" not in train_ds.column_names:
            train_ds = with_positions(train_ds)
        args.include_num_input_tokens_seen = "all"  # no padding to leave out, and EOS (the pad token) counts
    return trainer_class(cfg)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=argmax_logits if eval_ds is not None else None,
        optimizers=optimizers,
        callbacks=[c for c in callbacks if c is not None],
    )
