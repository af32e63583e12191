"""stage=dpo: direct preference optimization with TRL's DPOTrainer.

data (pairs) -> policy (+ LoRA config) -> DPOTrainer -> train -> evaluate -> save -> report.
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
    from trl import DPOConfig, DPOTrainer

    from ftrun.stages.common import load_policy, log_start, prepare_data, stage_callbacks, start_from_run, start_tracking
    from ftrun.fit import train_and_report, training_arguments

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    tokenizer = data.tokenizer
    cfg = start_from_run(cfg, run_dir)

    log.info("Loading policy '%s' (method %s)", cfg.model.name, cfg.method.name)
    model, peft_config = load_policy(cfg)
    st = cfg.stage
    args = training_arguments(
        cfg, run_dir, has_eval=data.eval is not None, cls=DPOConfig,
        beta=st.beta, label_smoothing=st.label_smoothing, **dpo_loss_arguments(st),
        max_length=cfg.data.cutoff_len, gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    tracker = start_tracking(cfg, run_dir, overrides)
    log.info("Building DPOTrainer (beta=%g, loss_type=%s)", st.beta, ",".join(st.loss_type))
    trainer = DPOTrainer(
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


def dpo_loss_arguments(st) -> dict:
    """DPOConfig's loss_type and loss_weights: ``stage.loss_type`` summed, plus TRL's ``sft`` loss on the
    chosen answers weighted by ``stage.pref_ftx`` (LLaMA-Factory's pref_ftx; with sigmoid that is RPO)."""
    types = list(st.loss_type)
    ftx = float(st.get("pref_ftx", 0.0))
    if ftx <= 0:
        return {"loss_type": types}
    return {"loss_type": types + ["sft"], "loss_weights": [1.0] * len(types) + [ftx]}
