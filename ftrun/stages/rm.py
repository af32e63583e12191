"""stage=rm: a reward model trained on preference pairs with TRL's RewardTrainer.

seed -> pairs -> base with a one-output score head -> method -> RewardTrainer -> train -> report.
The loss is -log sigmoid(score(chosen) - score(rejected)) (Bradley-Terry);
returns eval pairwise accuracy, the share of eval pairs scored in the right order.
The saved model (adapter + score head, or full weights) is what ``stage=ppo``
takes as ``stage.reward_run``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    from ftrun.model import apply_method, load_model, load_tokenizer
    from ftrun.stages.common import log_trainable, stage_callbacks, start_from_run
    from ftrun.stages.data import load_pairs, to_trl
    from ftrun.tracking import make_tracker
    from ftrun.trainer import train_and_report, training_arguments

    set_seed(cfg.seed)
    log.info("Reading preference pairs '%s'", cfg.data.name)
    train_pairs, eval_pairs = load_pairs(cfg.data)  # bad data fails here, before any model loads
    log.info("Data: %d train / %d eval pairs", len(train_pairs), len(eval_pairs))
    cfg = start_from_run(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model)

    log.info("Loading '%s' with a reward head (method %s)", cfg.model.name, cfg.method.name)
    model = load_model(cfg, AutoModelForSequenceClassification, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    model = apply_method(model, cfg, task_type="SEQ_CLS")  # lora: SEQ_CLS also trains the score head
    if cfg.method.name in ("freeze", "llama_pro"):
        model.score.requires_grad_(True)  # the new head must learn whatever layers train
    args = training_arguments(
        cfg, run_dir, has_eval=bool(eval_pairs), cls=RewardConfig,
        max_length=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = make_tracker(cfg, run_dir, overrides)
    log.info("Building RewardTrainer")
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([to_trl(p) for p in train_pairs]),
        eval_dataset=Dataset.from_list([to_trl(p) for p in eval_pairs]) if eval_pairs else None,
        processing_class=tokenizer,
        callbacks=stage_callbacks(cfg, tracker),
    )
    if cfg.method.name == "qlora":  # TRL casts a quantized model's trainable weights to bf16; the head
        dtype = trainer.model.get_input_embeddings().weight.dtype  # must match the hidden states it reads
        for name, p in trainer.model.named_parameters():
            if p.requires_grad and "score" in name:
                p.data = p.data.to(dtype)
    log_trainable(tracker, trainer.model, {"data_train_samples": len(train_pairs)})
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)
