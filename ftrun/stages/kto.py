"""stage=kto: Kahneman-Tversky optimization with TRL's KTOTrainer.

data (answers labelled good or bad: a KTO dataset, or pairs split into a good
and a bad answer) -> policy (+ LoRA config) -> KTOTrainer -> train -> evaluate
-> save -> report. Like dpo, the reference is the starting
model (with lora/qlora: the adapter disabled). Returns the eval reward margin
(mean implicit reward of the good answers minus that of the bad ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from trl import KTOConfig, KTOTrainer

    from ftrun.stages.common import load_policy, log_start, prepare_data, stage_callbacks, start_from_run, start_tracking
    from ftrun.fit import train_and_report, training_arguments

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    check_eval_labels(cfg, data.eval)
    tokenizer = data.tokenizer
    cfg = start_from_run(cfg, run_dir)

    log.info("Loading policy '%s' (method %s)", cfg.model.name, cfg.method.name)
    model, peft_config = load_policy(cfg)
    args = training_arguments(
        cfg, run_dir, has_eval=data.eval is not None, cls=KTOConfig,
        beta=cfg.stage.beta, max_length=cfg.data.cutoff_len,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = start_tracking(cfg, run_dir, overrides)
    log.info("Building KTOTrainer (beta=%g)", cfg.stage.beta)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,  # lora/qlora: the adapter disabled; full/freeze: a frozen copy of the start
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(cfg, tracker),
    )
    log_start(tracker, trainer.model, data)
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)


def check_eval_labels(cfg, evals) -> None:
    """eval_rewards/margins compares good with bad answers: the eval split needs both (checked before the model)."""
    if cfg.objective != "eval_rewards/margins" or evals is None:
        return
    from ftrun.config import ConfigError

    labels = set(evals["label"])
    if labels != {True, False}:
        have = "good" if True in labels else "bad"
        raise ConfigError(f"objective=eval_rewards/margins: the {len(evals)} held-out answer(s) of data.val_size="
                          f"{cfg.data.val_size:g} are all {have}, and the margin needs good and bad ones; raise "
                          "data.val_size (e.g. data.val_size=0.2) or set objective=eval_loss")
