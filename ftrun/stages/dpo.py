"""stage=dpo: direct preference optimization with TRL's DPOTrainer.

seed -> pairs -> policy (+ LoRA config) -> DPOTrainer -> train -> report.
The reference is the starting model (the base, or ``stage.init_run``'s
model): with lora/qlora the policy's adapter disabled, otherwise a frozen copy.
Returns eval reward accuracy: the share of eval pairs whose implicit reward
``beta * log(pi / pi_ref)`` is higher for the chosen answer.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from ftrun.model import load_tokenizer
    from ftrun.stages.common import load_policy, log_trainable, stage_callbacks, start_from_run
    from ftrun.stages.data import load_pairs, to_trl
    from ftrun.tracking import make_tracker
    from ftrun.trainer import train_and_report, training_arguments

    set_seed(cfg.seed)
    log.info("Reading preference pairs '%s'", cfg.data.name)
    train_pairs, eval_pairs = load_pairs(cfg.data)  # bad data fails here, before any model loads
    log.info("Data: %d train / %d eval pairs", len(train_pairs), len(eval_pairs))
    cfg = start_from_run(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model)

    log.info("Loading policy '%s' (method %s)", cfg.model.name, cfg.method.name)
    model, peft_config = load_policy(cfg)
    st = cfg.stage
    args = training_arguments(
        cfg, run_dir, has_eval=bool(eval_pairs), cls=DPOConfig,
        beta=st.beta, label_smoothing=st.label_smoothing, **dpo_loss_arguments(st),
        max_length=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = make_tracker(cfg, run_dir, overrides)
    log.info("Building DPOTrainer (beta=%g, loss_type=%s)", st.beta, ",".join(st.loss_type))
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # lora/qlora: the adapter disabled; full/freeze: a frozen copy of the start
        args=args,
        train_dataset=Dataset.from_list([to_trl(p) for p in train_pairs]),
        eval_dataset=Dataset.from_list([to_trl(p) for p in eval_pairs]) if eval_pairs else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=stage_callbacks(cfg, tracker),
    )
    log_trainable(tracker, trainer.model, {"data_train_samples": len(train_pairs)})
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir)


def dpo_loss_arguments(st) -> dict:
    """DPOConfig's loss_type and loss_weights: ``stage.loss_type`` summed, plus TRL's ``sft`` loss on the
    chosen answers weighted by ``stage.pref_ftx`` (LLaMA-Factory's pref_ftx; with sigmoid that is RPO)."""
    types = list(st.loss_type)
    ftx = float(st.get("pref_ftx", 0.0))
    if ftx <= 0:
        return {"loss_type": types}
    return {"loss_type": types + ["sft"], "loss_weights": [1.0] * len(types) + [ftx]}
