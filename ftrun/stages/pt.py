"""stage=pt: continued pre-training on raw text with transformers' Trainer.

seed -> documents -> tokens, EOS after each document, packed into blocks of
cutoff_len -> model -> method -> Trainer -> train -> report. No chat template:
the model learns the text itself, every token. Returns eval loss.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

log = logging.getLogger(__name__)


def pack(docs: List[str], tokenizer, block_size: int) -> List[List[int]]:
    """Token blocks of ``block_size``: documents joined with EOS, then cut.

    The last partial block is dropped unless it is the only one. Attention spans
    document boundaries within a block (as in pre-training); EOS marks them.
    """
    ids: List[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < block_size:
        blocks.pop()
    return blocks


def run(cfg, run_dir: Path, overrides=None) -> float:
    from transformers import Trainer, default_data_collator, set_seed

    from ftrun.model import apply_method, load_model, load_tokenizer
    from ftrun.stages.common import log_trainable, stage_callbacks, start_from_run
    from ftrun.stages.data import load_texts
    from ftrun.tracking import make_tracker
    from ftrun.trainer import train_and_report, training_arguments

    set_seed(cfg.seed)
    log.info("Reading raw text '%s'", cfg.data.name)
    train_docs, eval_docs = load_texts(cfg.data, cfg.stage.text_column)  # bad data fails before the model
    cfg = start_from_run(cfg, run_dir)
    tokenizer = load_tokenizer(cfg.model)
    block = cfg.data.cutoff_len
    train_blocks, eval_blocks = pack(train_docs, tokenizer, block), pack(eval_docs, tokenizer, block)
    log.info("Data: %d train / %d eval documents -> %d / %d blocks of %d tokens",
             len(train_docs), len(eval_docs), len(train_blocks), len(eval_blocks), block)

    log.info("Loading model '%s' (method %s)", cfg.model.name, cfg.method.name)
    model = apply_method(load_model(cfg), cfg)
    tracker = make_tracker(cfg, run_dir, overrides)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, run_dir, has_eval=bool(eval_blocks)),
        train_dataset=_as_dataset(train_blocks),
        eval_dataset=_as_dataset(eval_blocks) if eval_blocks else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,  # blocks are full, so no padding (and EOS keeps its loss)
        callbacks=stage_callbacks(cfg, tracker),
    )
    log_trainable(tracker, model, {"data_train_documents": len(train_docs), "data_train_blocks": len(train_blocks)})
    return train_and_report(cfg, trainer, tokenizer, tracker, run_dir, extra_metrics=_perplexity)


def _as_dataset(blocks):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks],
                              "labels": blocks})


def _perplexity(history) -> dict:
    import math

    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {"eval_perplexity": math.exp(min(evals[-1], 50.0))} if evals else {}
