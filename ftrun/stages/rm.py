"""stage=rm: a reward model trained on preference pairs with TRL's RewardTrainer.

data (pairs) -> base with a one-output score head -> method -> RewardTrainer -> train -> evaluate -> save -> report.
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
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from ftrun.model import apply_method, load_model
    from ftrun.stages.common import log_start, prepare_data, stage_callbacks, start_from_run, start_tracking
    from ftrun.fit import train_and_report, training_arguments

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    tokenizer = data.tokenizer
    cfg = start_from_run(cfg, run_dir)

    log.info("Loading '%s' with a reward head (method %s)", cfg.model.name, cfg.method.name)
    model = load_model(cfg, AutoModelForSequenceClassification, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    model = apply_method(model, cfg, task_type="SEQ_CLS")  # lora: SEQ_CLS also trains the score head
    if cfg.method.name in ("freeze", "llama_pro"):
        model.score.requires_grad_(True)  # the new head must learn whatever layers train
    args = training_arguments(
        cfg, run_dir, has_eval=data.eval is not None, cls=RewardConfig,
        max_length=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = start_tracking(cfg, run_dir, overrides)
    log.info("Building RewardTrainer")
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=stage_callbacks(cfg, tracker),
    )
    if cfg.method.name == "qlora":  # TRL casts a quantized model's trainable weights to bf16; the head
        dtype = trainer.model.get_input_embeddings().weight.dtype  # must match the hidden states it reads
        for name, p in trainer.model.named_parameters():
            if p.requires_grad and "score" in name:
                p.data = p.data.to(dtype)
    log_start(tracker, trainer.model, data)
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)
