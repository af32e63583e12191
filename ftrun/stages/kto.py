"""stage=kto: Kahneman-Tversky optimization with TRL's KTOTrainer.

seed -> pairs split into good and bad single answers -> policy (+ LoRA config)
-> KTOTrainer -> train -> report. Like dpo, the reference is the starting
model (with lora/qlora: the adapter disabled). Returns the eval reward margin
(mean implicit reward of the good answers minus that of the bad ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from datasets import Dataset
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    from ftrun.model import load_tokenizer
    from ftrun.stages.common import load_policy, log_trainable, stage_callbacks, start_from_run
    from ftrun.stages.data import load_pairs, to_unpaired
    from ftrun.tracking import make_tracker
    from ftrun.trainer import train_and_report, training_arguments

    set_seed(cfg.seed)
    log.info("Reading preference pairs '%s' (each gives a good and a bad answer)", cfg.data.name)
    train_pairs, eval_pairs = load_pairs(cfg.data)  # bad data fails here, before any model loads
    train_rows, eval_rows = to_unpaired(train_pairs), to_unpaired(eval_pairs)
    log.info("Data: %d train / %d eval labelled answers", len(train_rows), len(eval_rows))
    cfg = start_from_run(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model)

    log.info("Loading policy '%s' (method %s)", cfg.model.name, cfg.method.name)
    model, peft_config = load_policy(cfg)
    args = training_arguments(
        cfg, run_dir, has_eval=bool(eval_rows), cls=KTOConfig,
        beta=cfg.stage.beta, max_length=cfg.data.cutoff_len,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = make_tracker(cfg, run_dir, overrides)
    log.info("Building KTOTrainer (beta=%g)", cfg.stage.beta)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,  # lora/qlora: the adapter disabled; full/freeze: a frozen copy of the start
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(cfg, tracker),
    )
    log_trainable(tracker, trainer.model, {"data_train_samples": len(train_rows)})
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)
