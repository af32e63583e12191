"""stage=pt: continued pre-training on raw text with transformers' Trainer.

data (documents tokenized, EOS after each, packed into blocks of cutoff_len)
-> model -> method -> Trainer -> train -> evaluate -> save -> report. No chat
template: the model learns the text itself, every token. Returns eval loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(cfg, run_dir: Path, overrides=None) -> float:
    from transformers import default_data_collator

    from ftrun.model import apply_method, load_model
    from ftrun.stages.common import log_start, prepare_data, stage_callbacks, start_from_run, start_tracking
    from ftrun.fit import train_and_report, training_arguments
    from ftrun.linear_cross_entropy import trainer_class

    data = prepare_data(cfg)  # bad data fails here, before any model loads
    cfg = start_from_run(cfg, run_dir)

    log.info("Loading model '%s' (method %s)", cfg.model.name, cfg.method.name)
    model = apply_method(load_model(cfg), cfg)
    tracker = start_tracking(cfg, run_dir, overrides)
    trainer = trainer_class(cfg)(
        model=model,
        args=training_arguments(cfg, run_dir, has_eval=data.eval is not None),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=data.tokenizer,
        data_collator=default_data_collator,  # blocks are full, so no padding (and EOS keeps its loss)
        callbacks=stage_callbacks(cfg, tracker),
    )
    log_start(tracker, model, data)
    return train_and_report(cfg, trainer, data.tokenizer, tracker, run_dir)
